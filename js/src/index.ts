// The nbchat pane: an anywidget module. `initialize` runs once per model and keeps the
// transcript and the in-flight reply's text, so every view (a second display(chat), a
// view created mid-stream) starts from the same state; `render` builds one view.
// The compare pane (nbchat.Compare) is drawn by this bundle too, for a model whose
// `kind` is "compare": one bundle to build and ship for both widgets.

import type { AnyModel, Initialize, InitializeProps, Render, RenderProps } from "@anywidget/types";

import compare, { isCompareModel, type CompareModel } from "./compare";

import { isKernelMessage, isTranscriptMessage, type ChatModel } from "./model";
import { hideSavedCopy } from "./saved";
import { LiveStream } from "./stream";
import { TranscriptStore } from "./transcript";
import { renderChat } from "./view";

interface PaneState {
  stream: LiveStream;
  transcript: TranscriptStore;
}

// Keyed by the chat's id: anywidget gives initialize and each render a different
// proxy of the same model, so the proxies cannot be the key.
const panes = new Map<string, PaneState>();

function paneFor(model: AnyModel<ChatModel>): PaneState {
  const id = model.get("chat_id");
  let pane = panes.get(id);
  if (!pane) {
    pane = { stream: new LiveStream(), transcript: new TranscriptStore() };
    panes.set(id, pane);
  }
  return pane;
}

const initialize: Initialize<ChatModel> = (props) => {
  if (isCompareModel(props.model)) {
    return compare.initialize(props as unknown as InitializeProps<CompareModel>);
  }
  const { model } = props;
  const { stream, transcript } = paneFor(model);
  const onMessage = (message: unknown) => {
    // A message that starts past what we have means one went missing: ask for all.
    const result = isKernelMessage(message)
      ? stream.apply(message)
      : isTranscriptMessage(message)
        ? transcript.apply(message)
        : "stale";
    if (result === "gap") model.send({ type: "sync" });
  };
  model.on("msg:custom", onMessage);
  // A model created mid-stream (a page reload) catches up to the text so far.
  model.send({ type: "sync" });
  return () => {
    model.off("msg:custom", onMessage);
    panes.delete(model.get("chat_id"));
  };
};

const render: Render<ChatModel> = (props) => {
  if (isCompareModel(props.model)) return compare.render(props as unknown as RenderProps<CompareModel>);
  const { model, el } = props;
  const { stream, transcript } = paneFor(model);
  const showSavedCopy = hideSavedCopy(model.get("chat_id"));
  const cleanup = renderChat(model, el, stream, transcript);
  return () => {
    cleanup();
    showSavedCopy();
  };
};

export default { initialize, render };
