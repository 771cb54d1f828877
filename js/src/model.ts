// The widget's synced traits (mirrors nbchat.widget.Chat) and the messages the kernel
// and the pane exchange (mirrors nbchat.pane).

export type Role = "system" | "user" | "assistant" | "tool";
export type Finish = "stop" | "length" | "stopped" | "error";
export type ReplyStatus = "pending" | "streaming" | "paused" | "done" | "stopped" | "error";
export type LinkStatus = "connecting" | "connected" | "reconnecting" | "offline" | "closed";

/** A kernel object attached to a user message (nbchat.context): `text` is what the
 * model received after the message. */
export interface Attachment {
  name: string;
  kind: string;
  summary: string;
  text: string;
  /** A figure's picture: a data:image/png;base64,... URI. */
  image?: string;
  /** What the latest request did with the picture ("picture sent to gpt-4o"). */
  picture?: string;
}

export interface MessageRecord {
  turn: number;
  role: Role;
  content: string;
  /** What was attached to a user message; null when nothing was (optional: records
   * from an older kernel lack it). */
  context?: Attachment[] | null;
  model: string | null;
  finish: Finish | null;
  error: string | null;
  reply_id: string | null;
  reasoning: string | null;
  first_token_s: number | null;
  duration_s: number | null;
  tokens_per_s: number | null;
  /** A tool row (role "tool"): the function, the arguments the model gave, the call's
   * id; its content is the result (optional: records from an older kernel lack them). */
  tool_name?: string | null;
  tool_arguments?: Record<string, unknown> | null;
  tool_call?: string | null;
  /** Where the message sits in the tree of branches (optional: records from a kernel
   * without branches lack them, and then the pane offers no Retry, Edit or arrows).
   * `id` is the message's own, stable across branches; its siblings are the other
   * answers to (or versions of) the same message: `sibling_index` (1-based) of
   * `sibling_count` (1 when it has none). */
  id?: string;
  parent?: string | null;
  branch?: number;
  sibling_index?: number;
  sibling_count?: number;
  cost?: number | null;
}

export interface ActiveReply {
  reply?: string;
  status?: ReplyStatus;
  model?: string | null;
  /** Ids of the reply's tool calls waiting for the user's Run / Don't run. */
  asking?: string[];
}

/** The synced traits of nbchat.Chat. */
export interface ChatModel {
  chat_id: string;
  status: LinkStatus;
  status_detail: string;
  error: string;
  models: string[];
  model: string;
  active: ActiveReply;
}

/** kernel -> pane */
export interface ChunkMessage {
  type: "chunk";
  reply: string;
  offset: number;
  text: string;
  kind?: "reasoning";
}
export interface SnapshotMessage {
  type: "snapshot";
  reply: string;
  text: string;
  kind?: "reasoning";
}
export type KernelMessage = ChunkMessage | SnapshotMessage;
/** kernel -> pane: the transcript's records from index `from` on. */
export interface TranscriptMessage {
  type: "transcript";
  from: number;
  records: MessageRecord[];
}

/** pane -> kernel */
export type PaneCommand =
  | { type: "send"; text: string }
  | { type: "stop" | "pause" | "resume" | "clear" | "sync" | "reconnect" }
  | { type: "tool_answer"; call: string; run: boolean }
  | BranchCommand;

/** pane -> kernel: the commands that change branch; the kernel refuses them while a
 * reply is in flight. `retry` asks again for the last reply; `edit` sends a new version
 * of user message `id`; `checkout` shows the branch through message `id`, or, with
 * `sibling`, through the sibling at that 1-based index among `id`'s siblings. */
export type BranchCommand =
  | { type: "retry" }
  | { type: "edit"; id: string; text: string }
  | { type: "checkout"; id: string; sibling?: number };

export function isKernelMessage(value: unknown): value is KernelMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  if (typeof m.reply !== "string" || typeof m.text !== "string") return false;
  if (m.type === "snapshot") return true;
  return m.type === "chunk" && typeof m.offset === "number" && m.offset >= 0;
}

export function isTranscriptMessage(value: unknown): value is TranscriptMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  return (
    m.type === "transcript" && typeof m.from === "number" && m.from >= 0 && Array.isArray(m.records)
  );
}
