// The nbchat pane: an anywidget module. `initialize` runs once per model and keeps the
// in-flight reply's text, so every view (a second display(chat), a view created
// mid-stream) starts from the same text; `render` builds one view.

import type { AnyModel, Initialize, Render } from "@anywidget/types";

import { isKernelMessage, type ChatModel } from "./model";
import { LiveStream } from "./stream";
import { renderChat } from "./view";

// Keyed by the chat's id: anywidget gives initialize and each render a different
// proxy of the same model, so the proxies cannot be the key.
const streams = new Map<string, LiveStream>();

function streamFor(model: AnyModel<ChatModel>): LiveStream {
  const id = model.get("chat_id");
  let stream = streams.get(id);
  if (!stream) {
    stream = new LiveStream();
    streams.set(id, stream);
  }
  return stream;
}

const initialize: Initialize<ChatModel> = ({ model }) => {
  const stream = streamFor(model);
  const onMessage = (message: unknown) => {
    // A batch that starts past our text went missing: ask for all of it.
    if (isKernelMessage(message) && stream.apply(message) === "gap") {
      model.send({ type: "sync" });
    }
  };
  model.on("msg:custom", onMessage);
  // A model created mid-stream (a page reload) catches up to the text so far.
  model.send({ type: "sync" });
  return () => {
    model.off("msg:custom", onMessage);
    streams.delete(model.get("chat_id"));
  };
};

const render: Render<ChatModel> = ({ model, el }) => renderChat(model, el, streamFor(model));

export default { initialize, render };
