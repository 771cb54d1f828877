// The transcript as the pane holds it, from the kernel's `transcript` messages. Pure.
// Each message replaces the records from index `from` on, so a turn sends only what it
// changed; one that starts past our end (a gap: the pane missed something) cannot be
// applied, and then the pane asks for the whole transcript again.

import type { MessageRecord, TranscriptMessage } from "./model";

export class TranscriptStore {
  records: MessageRecord[] = [];
  /** Whether the kernel has sent the transcript yet (until then, empty means unknown). */
  loaded = false;
  private readonly listeners = new Set<(from: number) => void>();

  /** Call `listener(from)` after each change: the records from index `from` on are
   * new objects (those before it are the same as before). */
  subscribe(listener: (from: number) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  apply({ from, records }: TranscriptMessage): "applied" | "gap" {
    if (from > this.records.length) return "gap";
    this.records = this.records.slice(0, from).concat(records);
    this.loaded = true;
    this.listeners.forEach((listener) => listener(from));
    return "applied";
  }
}
