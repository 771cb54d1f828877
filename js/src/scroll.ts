// Autoscroll: follow the stream while the reader is at the bottom; stop following as
// soon as they scroll up, and offer a way back. Pure apart from the metrics passed in.

export interface ScrollMetrics {
  scrollTop: number;
  clientHeight: number;
  scrollHeight: number;
}

/** Within `slack` pixels of the bottom counts as at the bottom. */
export function atBottom(m: ScrollMetrics, slack = 32): boolean {
  return m.scrollHeight - m.scrollTop - m.clientHeight <= slack;
}

export class AutoScroll {
  following = true;

  /** After a scroll event (the reader's or ours): follow only if at the bottom. */
  onScroll(m: ScrollMetrics): void {
    this.following = atBottom(m);
  }

  /** The reader asked to jump to the latest text. */
  jump(): void {
    this.following = true;
  }

  /** Whether the "jump to latest" button should show. */
  showJump(m: ScrollMetrics): boolean {
    return !this.following && !atBottom(m);
  }
}
