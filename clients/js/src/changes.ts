/**
 * Applying `message.edited`, `message.deleted` and `message.reacted` to
 * messages an app keeps itself (the room view uses the same functions).
 *
 * Change frames carry the message as it stands, so applying one sets
 * fields and never adds: applying it again, or applying one the message
 * already reflects (a history page is read as things stand), changes
 * nothing. A deletion is final: nothing changes a tombstone back.
 */
import type { ChatMessage, MessageChangeFrame, Reaction, ReplyQuote } from "./frames.js";

/** How many characters of the answered message a reply quotes (the server's rule). */
export const QUOTE_CHARS = 120;

/** The first `QUOTE_CHARS` characters (code points, as the server counts) of `body`. */
export function excerptOf(body: string): string {
  const chars = Array.from(body);
  return chars.length <= QUOTE_CHARS ? body : chars.slice(0, QUOTE_CHARS).join("");
}

/**
 * `message` after `change`, when the change names it (`change.message_seq
 * === message.seq`); otherwise `message` itself. A new object when
 * something changed, the same one when nothing did.
 */
export function applyChange<M extends ChatMessage>(message: M, change: MessageChangeFrame): M {
  if (change.message_seq !== message.seq || change.room !== message.room) return message;
  switch (change.type) {
    case "message.edited": {
      if (message.deleted_at !== undefined) return message;
      const editedAt = change.edited_at ?? change.at;
      if (message.body === change.body && message.edited_at === editedAt) return message;
      return { ...message, body: change.body, edited_at: editedAt };
    }
    case "message.deleted": {
      if (message.deleted_at !== undefined) return message;
      const { attachments: _attachments, reactions: _reactions, ...rest } = message;
      return { ...rest, body: "", deleted_at: change.at } as M;
    }
    case "message.reacted": {
      if (message.deleted_at !== undefined) return message;
      if (sameReactions(message.reactions ?? [], change.reactions)) return message;
      const { reactions: _reactions, ...rest } = message;
      if (change.reactions.length === 0) return rest as M;
      return {
        ...rest,
        reactions: change.reactions.map((r) => ({ emoji: r.emoji, count: r.count, user_ids: [...r.user_ids] })),
      } as M;
    }
    default:
      return message;
  }
}

/**
 * `message` with its reply quote brought up to date when `change` edits or
 * deletes the message it answers (an excerpt of the new text; `deleted`
 * and an empty excerpt); otherwise `message` itself.
 */
export function applyChangeToQuote<M extends ChatMessage>(message: M, change: MessageChangeFrame): M {
  const quote = message.reply_to;
  if (!quote || quote.seq !== change.message_seq || change.room !== message.room) return message;
  let updated: ReplyQuote | undefined;
  if (change.type === "message.edited") {
    const excerpt = excerptOf(change.body);
    if (!quote.deleted && quote.excerpt !== excerpt) updated = { ...quote, excerpt };
  } else if (change.type === "message.deleted") {
    if (!quote.deleted || quote.excerpt !== "") updated = { ...quote, excerpt: "", deleted: true };
  }
  return updated ? { ...message, reply_to: updated } : message;
}

function sameReactions(a: readonly Reaction[], b: readonly Reaction[]): boolean {
  return (
    a.length === b.length &&
    a.every((r, i) => {
      const other = b[i];
      return (
        other !== undefined &&
        r.emoji === other.emoji &&
        r.count === other.count &&
        r.user_ids.length === other.user_ids.length &&
        r.user_ids.every((id, j) => id === other.user_ids[j])
      );
    })
  );
}
