// The WebSocket side of the page: where to connect, how to pass the API key, what a close means.
//
// Browsers cannot set an Authorization header on a WebSocket, so the key travels the way the
// OpenAI Realtime protocol defines for browsers: as a subprotocol `openai-insecure-api-key.<key>`
// offered next to `realtime`.

/** A session key for this page: a load balancer in front of several server processes hashes on it
 * (`?session=`), so the page's sessions spread over them. getRandomValues, unlike randomUUID, also
 * works on a plain-http LAN page. */
export function newSessionKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const pageSessionKey = newSessionKey();

/** The Realtime URL of the server that served this page: wss: behind TLS, relative to the page's
 * folder so that a reverse proxy may serve us under a sub-path, with this page's session key; with
 * `resume` ({token, received}), the URL that takes a dropped session back. */
export function realtimeUrl(loc = window.location, sessionKey = pageSessionKey, resume = null) {
  const url = new URL("v1/realtime", loc.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("session", sessionKey);
  if (resume) {
    url.searchParams.set("resume", resume.token);
    url.searchParams.set("received", String(resume.received));
  }
  return url.href;
}

/** What `/readyz` says: `{ready, auth, status}`; `auth` is null when the server did not say. */
export async function serverStatus() {
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json();
    return { ready: response.ok, auth: "auth" in body ? Boolean(body.auth) : null, status: body.status };
  } catch {
    return { ready: false, auth: null, status: "unreachable" };
  }
}

/** One session, over one connection or, after network blips, several. Callbacks: onOpen(),
 * onEvent(event, receivedAt), onBinary(bytes, receivedAt), onClose({code, reason, opened});
 * `receivedAt` is the message's arrival on the `performance.now()` clock. `bytesSent` and
 * `bytesReceived` count what crossed the socket (payloads).
 *
 * Resuming: every `session.created` brings a single-use resume token. The client counts the messages
 * it received (all but each connection's `session.created`, as the server counts them), so that a
 * reconnect with `resume` gets exactly what the drop lost, nothing twice. */
export class RealtimeClient {
  constructor({ onOpen, onEvent, onBinary = () => {}, onClose }) {
    Object.assign(this, { onOpen, onEvent, onBinary, onClose });
    this.socket = null;
    this.bytesSent = 0;
    this.bytesReceived = 0;
    this.received = 0; // messages of this session received, the server's way of counting
    this.resumeToken = null;
    this.resumeGraceS = 0;
    this.droppedAt = null; // performance.now() when the last connection dropped without a close frame
  }

  /** Dial a new session, or with `resume` take back the last one; throws only for a key the browser
   * refuses to put in a subprotocol. */
  connect(apiKey, { resume = false } = {}) {
    const protocols = ["realtime"];
    if (apiKey) protocols.push(`openai-insecure-api-key.${apiKey}`);
    const back = resume && this.canResume ? { token: this.resumeToken, received: this.received } : null;
    const socket = new WebSocket(realtimeUrl(window.location, pageSessionKey, back), protocols); // SyntaxError for odd characters
    socket.binaryType = "arraybuffer"; // Opus answer frames
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.onOpen();
    };
    socket.onmessage = (message) => {
      if (message.data instanceof ArrayBuffer) {
        this.bytesReceived += message.data.byteLength;
        this.received += 1;
        this.onBinary(new Uint8Array(message.data), message.timeStamp);
        return;
      }
      this.bytesReceived += message.data.length;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        this.received += 1;
        return; // not ours to handle: the server's text frames are JSON
      }
      if (event.type === "session.created") this.tookSession(event);
      else this.received += 1;
      this.onEvent(event, message.timeStamp);
    };
    socket.onclose = (close) => {
      if (this.socket === socket) this.socket = null;
      // 1006: the connection ended without a close frame, the mark of a network blip. A dial that
      // never opened changes nothing: the session dropped earlier is still waiting on the server.
      if (opened) this.droppedAt = close.code === 1006 ? performance.now() : null;
      this.onClose({ code: close.code, reason: close.reason, opened });
    };
    this.socket = socket;
  }

  /** A `session.created`: a fresh session counts from zero; a resumed one from where the server goes on. */
  tookSession({ freeze_omni: extension = {} }) {
    this.received = extension.resumed ? extension.received : 0;
    this.resumeToken = extension.resume_token ?? null;
    this.resumeGraceS = extension.resume_grace_s ?? 0;
  }

  /** Whether the session that just dropped can still be taken back (the server keeps it for its grace time). */
  get canResume() {
    if (this.resumeToken === null || this.droppedAt === null) return false;
    return performance.now() - this.droppedAt < this.resumeGraceS * 1000;
  }

  /** The session is over for good (a close with a code, or the user left): nothing to resume. */
  forgetSession() {
    this.resumeToken = null;
    this.droppedAt = null;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  /** Send one client event; silently dropped when not connected. */
  send(event) {
    if (!this.isOpen) return;
    const text = JSON.stringify(event);
    this.bytesSent += text.length;
    this.socket.send(text);
  }

  /** Send one binary frame (an Opus packet); silently dropped when not connected. */
  sendBinary(bytes) {
    if (!this.isOpen) return;
    this.bytesSent += bytes.byteLength;
    this.socket.send(bytes);
  }

  /** Close from our side (1000); the close callback still runs. */
  close() {
    if (this.socket) this.socket.close(1000, "bye");
  }
}

// What each close code means to the person using the page. `retry`: try again by ourselves.
const CLOSE_MESSAGES = {
  1000: "Disconnected.",
  1001: "The server is shutting down or restarting. Press Connect to start a new conversation.",
  1008: "The server refused the API key. Enter a valid key to connect.",
  1009: "A message was too large for the server, so it closed the connection. Press Connect to start again.",
  1011: "The conversation failed on the server. Press Connect to start a new one.",
  1013: "Server busy, retrying…",
};

/** A human sentence for a close code; `idle` when the server said it timed us out. */
export function describeClose(code, { opened, idle }) {
  if (code === 1000 && idle) return "Closed after a long silence (idle timeout). Press Connect to talk again.";
  if (CLOSE_MESSAGES[code]) return CLOSE_MESSAGES[code];
  if (!opened) return "Could not reach the server. Is it running? Press Connect to try again.";
  return `The connection was lost (code ${code}). Press Connect to start again.`;
}

// Codes of `error` events, in words; the server's own message is shown for the rest.
const ERROR_MESSAGES = {
  capacity_exceeded: "Server busy: every conversation slot is taken.",
  server_not_ready: "The server is still loading its model.",
  idle_timeout: "Nothing was heard for a long time: the server is closing the conversation.",
  invalid_api_key: "The API key was refused.",
  message_too_large: "A message was too large for the server.",
  session_failed: "The conversation failed on the server.",
  internal_error: "The server hit an internal error.",
  input_audio_overflow: "The server cannot keep up with the microphone; some audio was dropped.",
  conversation_already_has_active_response: "Wait for the answer to finish before sending another.",
  session_not_found: "The conversation could not be taken back after the connection dropped; a new one has started.",
};

/** A human sentence for an `error` event. */
export function describeError(error = {}) {
  const known = ERROR_MESSAGES[error.code];
  if (known) return known;
  return `Server error: ${error.message || error.code || "unknown error"}`;
}
