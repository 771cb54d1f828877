// A chat pane mounted in jsdom for the pane's tests, over a FakeModel, with helpers
// to feed it transcript updates and find its messages. Call `unmountPanes()` after
// each test.
import type { AnyModel } from "@anywidget/types";

import type { ChatModel, MessageRecord } from "../src/model";
import { LiveStream } from "../src/stream";
import { TranscriptStore } from "../src/transcript";
import { renderChat } from "../src/view";
import { FakeModel } from "./fake-model";

const cleanups: Array<() => void> = [];

export function unmountPanes(): void {
  cleanups.splice(0).forEach((cleanup) => cleanup());
  document.body.replaceChildren();
}

export function mountPane() {
  const model = new FakeModel({
    chat_id: "c1", status: "connected", status_detail: "", error: "",
    models: ["demo"], model: "demo", active: {},
  });
  const stream = new LiveStream();
  const transcript = new TranscriptStore();
  const el = document.createElement("div");
  document.body.appendChild(el);
  cleanups.push(renderChat(model as unknown as AnyModel<ChatModel>, el, stream, transcript));
  const root = el.querySelector(".nbchat") as HTMLElement;
  const log = el.querySelector(".nbchat-log") as HTMLElement;
  const items = () => Array.from(log.querySelectorAll<HTMLElement>(".nbchat-msg"));
  const item = (text: string) =>
    items().find((node) => node.querySelector(".nbchat-body")?.textContent?.trim() === text);
  const within = (node: Element | undefined, selector: string) =>
    Array.from(node?.querySelectorAll<HTMLButtonElement>(selector) ?? []);
  const apply = (from: number, records: MessageRecord[]) =>
    transcript.apply({ type: "transcript", from, records: structuredClone(records) });
  return { model, stream, transcript, el, root, log, items, item, within, apply };
}

/** What changes under `node` while `act` runs. */
export function mutations(node: HTMLElement, act: () => void): MutationRecord[] {
  const observer = new MutationObserver(() => undefined);
  observer.observe(node, { subtree: true, childList: true, attributes: true, characterData: true });
  act();
  const records = observer.takeRecords();
  observer.disconnect();
  return records;
}
