// The in-flight reply's text as the pane assembles it from the kernel's batched
// messages. Pure. Each message says where its text starts, so applying one twice, or a
// snapshot and a chunk in either order, gives the same text; only a chunk that starts
// past the end (a gap) cannot be applied, and then the pane asks for a snapshot.

import type { ChunkMessage, KernelMessage, SnapshotMessage } from "./model";

export type ApplyResult = "applied" | "stale" | "gap";

export class StreamText {
  reply: string | null = null;
  text = "";

  apply(message: KernelMessage): ApplyResult {
    return message.type === "chunk" ? this.applyChunk(message) : this.applySnapshot(message);
  }

  private switchTo(reply: string): void {
    if (this.reply !== reply) {
      this.reply = reply;
      this.text = "";
    }
  }

  applyChunk({ reply, offset, text }: ChunkMessage): ApplyResult {
    this.switchTo(reply);
    if (offset > this.text.length) return "gap";
    const end = offset + text.length;
    if (end <= this.text.length) return "stale";
    this.text = this.text.slice(0, offset) + text;
    return "applied";
  }

  applySnapshot({ reply, text }: SnapshotMessage): ApplyResult {
    this.switchTo(reply);
    if (text.length <= this.text.length) return "stale";
    this.text = text;
    return "applied";
  }

  /** The text to show for a reply: the streamed text if it is this one's. */
  textFor(reply: string | null, fallback: string): string {
    return reply !== null && reply === this.reply && this.text.length >= fallback.length
      ? this.text
      : fallback;
  }
}

/** A StreamText shared by all views of one model, telling them when it changes. */
export class LiveStream {
  readonly text = new StreamText();
  readonly reasoning = new StreamText();
  private readonly listeners = new Set<() => void>();

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  apply(message: KernelMessage): ApplyResult {
    const target = message.kind === "reasoning" ? this.reasoning : this.text;
    const result = target.apply(message);
    if (result === "applied") this.listeners.forEach((listener) => listener());
    return result;
  }
}
