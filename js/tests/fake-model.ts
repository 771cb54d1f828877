// A widget model for the pane's tests: it records what the view sends and saves, and
// calls the view's handlers when a test sets a trait, as anywidget's model would.
import type { ChatModel, PaneCommand } from "../src/model";

export class FakeModel {
  sent: PaneCommand[] = [];
  saves = 0;
  private readonly handlers = new Map<string, Set<() => void>>();

  constructor(private readonly state: ChatModel) {}

  get<K extends keyof ChatModel>(name: K): ChatModel[K] {
    return this.state[name];
  }
  set<K extends keyof ChatModel>(name: K, value: ChatModel[K]): void {
    this.state[name] = value;
    this.handlers.get(`change:${name}`)?.forEach((handler) => handler());
  }
  save_changes(): void {
    this.saves += 1;
  }
  send(message: PaneCommand): void {
    this.sent.push(message);
  }
  on(event: string, handler: () => void): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)?.add(handler);
  }
  off(event: string, handler: () => void): void {
    this.handlers.get(event)?.delete(handler);
  }
}
