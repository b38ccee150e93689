/**
 * Answering a request before its body was read (401, 413, 415, ...): the rest of the body is read
 * and dropped up to MAX_DISCARD_BYTES, then the connection is cut. Closing a socket with unread
 * input makes the kernel send a reset and the client would see "connection reset" instead of the
 * answer (Go's net/http does the same). A body declared larger than the bound is not read at all:
 * the answer goes out with `connection: close` and the socket is cut once it is sent.
 */
import type { IncomingMessage, ServerResponse } from "node:http";

export const MAX_DISCARD_BYTES = 64 * 1024;

/** One header as a string (repeated headers joined as Node joins them). */
export function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(", ") : value;
}

/** Whether the unread rest of the body, as declared, is small enough to drain after answering. */
export function canDrain(req: IncomingMessage): boolean {
  return Number(header(req, "content-length") ?? "0") <= MAX_DISCARD_BYTES;
}

/** Cuts the connection once the answer is out (the rest of the body is never read). */
export function cutAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.once("finish", () => req.socket.destroy());
}

/** Reads and drops what is left of the body; past MAX_DISCARD_BYTES in all, cuts the connection. */
export function discardRest(req: IncomingMessage, alreadyDiscarded = 0): void {
  if (req.complete) return;
  let discarded = alreadyDiscarded;
  req.on("data", (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > MAX_DISCARD_BYTES) req.socket.destroy();
  });
  req.resume();
}
