// The page: connect, stream the microphone, play the answers, show what is going on.
//
// The visible state is derived from a few facts (is the user speaking, does audio play, is an
// answer on its way) every time one of them changes, rather than set by each event handler:
// that keeps "speaking" true exactly while audio plays, whatever order the events come in.
// `window.__stateLog` and friends record what happened, for the browser tests.

import { RealtimeClient, describeClose, describeError, serverStatus } from "./realtime-client.js";
import { Player, decodePcm16, encodePcm16 } from "./player.js";
import { microphoneUnavailableReason, startMicrophone } from "./microphone.js";
import {
  OPUS_BITRATE,
  OPUS_FORMAT,
  OpusAnswerDecoder,
  OpusMicEncoder,
  opusSupported,
  parseFrame,
} from "./opus.js";

const INPUT_RATE = 24000; // what we tell the server we send (the worklet resamples to it)
const RETRY_FIRST_MS = 500; // busy server (1013): 0.5 s, 1 s, 2 s ... 8 s, as the OpenAI SDK does
const RETRY_MAX_MS = 8000;
const RETRY_TRIES = 8;
const RESUME_FIRST_MS = 250; // a dropped connection: dial again at once, then 0.5 s, 1 s ... 4 s apart
const RESUME_MAX_MS = 4000;

const $ = (selector) => document.querySelector(selector);
const ui = {
  connect: $("#connect"),
  mic: $("#mic"),
  state: $("#state"),
  stateText: $("#state-text"),
  notice: $("#notice"),
  log: $("#log"),
  keyForm: $("#key-form"),
  key: $("#api-key"),
  textForm: $("#text-form"),
  text: $("#text"),
  instructionsForm: $("#instructions-form"),
  instructions: $("#instructions"),
  audioFormat: $("#audio-format"),
};

// What the tests read.
window.__stateLog = [];
window.__audio = { deltas: 0, secondsScheduled: 0, secondsSent: 0, packetsSent: 0, packetsReceived: 0 };
window.__audioFormat = null; // "opus" or "pcm16": what the server confirmed for this connection
window.__firstAudioLatenciesMs = [];
window.__lastStopLatencyMs = null; // speech_started (pause) or cancelling response.done -> output silent
window.__lastStopCallMs = null; // the same event -> every source stopped
window.__lastStop = null; // {sources: how many were stopped, wasSounding: audio was heard then}
window.__resumes = 0; // sessions taken back after a dropped connection
window.__answerBytes = {}; // pcm16 answer audio received, bytes by response id
window.__responsesDone = []; // {id, status} of each response.done

const page = {
  wanted: false, // the user wants a connection (we retry while this holds)
  retries: 0,
  retryTimer: null,
  resuming: false, // the connection dropped; we are taking the same session back
  resumeTries: 0,
  lostConversation: false, // the network stayed down past the server's grace time: say so once connected
  apiKey: sessionStorage.getItem("apiKey") || "",
  idleClosed: false,
  micProblem: null, // why there is no microphone, if there is none
  sessionReady: false,
  outputRate: 24000,
  userSpeaking: false,
  speech: null, // the user's spoken turn in progress: {startMs, endMs} on the server's audio clock
  awaitingAnswer: false, // a user turn ended; its answer has not started yet
  turnEndedAt: null, // performance.now() when the user's turn ended: first-audio latency from here
  response: null, // the answer in progress: {id, itemId, bubble, firstStart, scheduledS}
  cancelled: new Set(), // responses whose late audio must not play
  queuedText: null, // typed while an answer ran: sent once it is cancelled
  instructionsSent: false,
  shownState: null,
  audioChoice: null, // what we ask for: {format: "opus" | "pcm16", why}
  wireFormat: null, // what the server confirmed we send: "opus" | "pcm16" (null: not yet)
  outputOpus: false, // answers come as Opus frames
  responseIds: [], // ids in response.created order: an Opus frame's first byte indexes it
  opusEncoder: null,
};
let audioContext = null;
let player = null;
let microphone = null;
const client = new RealtimeClient({ onOpen, onEvent, onBinary, onClose });

// -- state ------------------------------------------------------------------------------------------

function currentState() {
  if (page.userSpeaking) return "listening";
  if (player?.playing) return "speaking";
  if (page.awaitingAnswer || page.response) return "thinking";
  return "idle";
}

function refreshState() {
  const state = currentState();
  if (state === page.shownState) return;
  page.shownState = state;
  window.__stateLog.push({ state, t: performance.now() });
  if (window.__stateLog.length > 1000) window.__stateLog.splice(0, 500); // a long talk stays light
  ui.state.dataset.state = state;
  ui.stateText.textContent = state;
}

function notify(message, kind = "info") {
  ui.notice.textContent = message;
  ui.notice.dataset.kind = kind;
}

function setConnected(connected) {
  ui.connect.textContent = connected || page.wanted ? "Disconnect" : "Connect";
  document.body.classList.toggle("connected", connected);
}

// -- the conversation log -----------------------------------------------------------------------------

const SPEAKERS = { user: "You", assistant: "Assistant" };

/** Append a turn to the log; returns its entry (its `.text` grows as the transcript streams). */
function addEntry(role, text) {
  ui.log.querySelector(".empty")?.remove();
  const entry = document.createElement("li");
  entry.className = role;
  const speaker = document.createElement("span");
  speaker.className = "sr-only";
  speaker.textContent = `${SPEAKERS[role]}: `;
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("p");
  meta.className = "meta";
  entry.append(speaker, body, meta);
  keepScrolled(() => ui.log.append(entry));
  return entry;
}

function appendText(entry, text) {
  keepScrolled(() => entry.querySelector(".text").append(text));
}

function addMeta(entry, text) {
  const meta = entry.querySelector(".meta");
  keepScrolled(() => (meta.textContent = meta.textContent ? `${meta.textContent} · ${text}` : text));
}

// Follow the conversation as it grows, unless the reader has scrolled up to read back.
function keepScrolled(change) {
  const log = ui.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  change();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// -- connecting ------------------------------------------------------------------------------------------

async function connect() {
  page.wanted = true;
  setConnected(false);
  if (page.retries === 0) notify("Connecting…"); // while retrying, "server busy" stays up
  const status = await serverStatus();
  if (!page.wanted) return;
  if (status.auth && !page.apiKey) {
    askForKey("This server needs an API key.");
    return;
  }
  try {
    client.connect(page.apiKey);
  } catch {
    forgetKey();
    askForKey("That key cannot be sent to a server (it has characters a browser refuses). Check it.");
  }
}

function disconnect() {
  page.wanted = false;
  page.resuming = false;
  clearTimeout(page.retryTimer);
  client.close();
  client.forgetSession();
  forgetConversation();
  stopMicrophone();
  stopPlayback();
  setConnected(false);
  notify("Disconnected.");
}

function forgetKey() {
  page.apiKey = "";
  sessionStorage.removeItem("apiKey");
}

function askForKey(message) {
  page.wanted = false;
  setConnected(false);
  ui.keyForm.hidden = false;
  notify(message, "error");
  ui.key.focus();
}

async function ensureAudio() {
  // Created on a click, so the browser lets it play sound.
  if (!audioContext) {
    audioContext = new AudioContext({ latencyHint: "interactive" });
    player = new Player(audioContext, { cushionS: 0.1, onChange: refreshState });
  }
  if (audioContext.state !== "running") await audioContext.resume();
}

async function startMicrophoneOnce() {
  if (microphone) return;
  const unavailable = microphoneUnavailableReason();
  if (unavailable) {
    page.micProblem = unavailable;
    notify(unavailable, "error");
    return;
  }
  try {
    microphone = await startMicrophone(audioContext, { rate: INPUT_RATE, onChunk: sendAudio });
    page.micProblem = null;
  } catch (error) {
    page.micProblem = `No microphone (${error.message}). Typed messages still work.`;
    notify(page.micProblem, "error");
  }
  if (!page.wanted) stopMicrophone(); // disconnected while the browser was asking
}

function stopMicrophone() {
  microphone?.stop();
  microphone = null;
}

function sendAudio(pcm16) {
  if (!page.sessionReady || !ui.mic.checked || page.wireFormat === null) return;
  if (page.wireFormat === "opus") page.opusEncoder.encode(pcm16);
  else client.send({ type: "input_audio_buffer.append", audio: encodePcm16(pcm16) });
  window.__audio.secondsSent += pcm16.length / INPUT_RATE;
}

// -- the audio format: Opus through WebCodecs where the browser has it, else pcm16 -----------------------

/** What to ask the server for. `?audio=pcm16` in the address keeps pcm16 (to compare, or to debug). */
async function chooseAudioFormat() {
  if (new URLSearchParams(window.location.search).get("audio") === "pcm16") {
    return { format: "pcm16", why: "asked for in the address" };
  }
  if (await opusSupported()) return { format: "opus", why: "WebCodecs" };
  return { format: "pcm16", why: "this browser has no WebCodecs Opus" };
}

function audioFormats(format) {
  if (format === "opus") {
    return { input: { type: OPUS_FORMAT }, output: { type: OPUS_FORMAT, bitrate: OPUS_BITRATE } };
  }
  return { input: { type: "audio/pcm", rate: INPUT_RATE }, output: { type: "audio/pcm", rate: 24000 } };
}

function showAudioFormat() {
  const { format, why } = page.audioChoice ?? {};
  const text =
    page.wireFormat === "opus"
      ? `Audio: Opus ${OPUS_BITRATE / 1000} kbit/s (${why})`
      : page.wireFormat === "pcm16"
        ? `Audio: pcm16 (${format === "opus" ? "the server refused Opus" : why})`
        : "";
  ui.audioFormat.textContent = text;
  ui.audioFormat.dataset.format = page.wireFormat ?? "";
  window.__audioFormat = page.wireFormat;
}

function startOpusEncoder() {
  page.opusEncoder?.close();
  page.opusEncoder = new OpusMicEncoder({
    onPacket: (packet) => {
      client.sendBinary(packet);
      window.__audio.packetsSent += 1;
    },
    onError: (error) => fallBackToPcm16(`the Opus encoder failed (${error.message})`),
  });
}

/** Opus failed here or was refused by the server: carry on in pcm16 on the same connection. */
function fallBackToPcm16(why) {
  page.opusEncoder?.close();
  page.opusEncoder = null;
  page.audioChoice = { format: "pcm16", why };
  page.wireFormat = null; // until the server confirms
  const { input, output } = audioFormats("pcm16");
  const session = { type: "realtime", audio: { input: { format: input }, output: { format: output } } };
  if (ui.instructions.value.trim()) session.instructions = ui.instructions.value;
  client.send({ type: "session.update", session });
}

function onBinary(bytes) {
  const [number, , packet] = parseFrame(bytes);
  const owners = page.responseIds.filter((_, index) => index % 256 === number);
  const id = owners[owners.length - 1];
  const response = page.response;
  window.__audio.packetsReceived += 1;
  if (!response || response.id !== id || !response.decoder || page.cancelled.has(id)) return;
  response.decoder.decode(packet);
}

/** Schedule a piece of the answer's audio (pcm16 delta, or decoded Opus) for playback. */
function scheduleAnswerAudio(response, samples, rate) {
  if (page.cancelled.has(response.id) || !player) return;
  response.bubble ??= addEntry("assistant", "");
  const startAt = player.enqueue(samples, rate);
  window.__audio.deltas += 1;
  window.__audio.secondsScheduled += samples.length / rate;
  response.scheduledS += samples.length / rate;
  response.segmentStart ??= startAt;
  if (response.firstStart === null) {
    response.firstStart = startAt;
    showFirstAudioLatency(response, startAt);
  }
  refreshState();
}

function onOpen() {
  setConnected(true);
  notify("Connected.");
  page.idleClosed = false;
}

function onClose({ code, opened }) {
  page.sessionReady = false;
  if (page.wanted && client.canResume) return resumeSoon();
  const wasResuming = page.resuming;
  page.resuming = false;
  client.forgetSession();
  forgetConversation();
  refreshState();
  if (!page.wanted) return; // we closed it ourselves
  if (wasResuming) {
    // The server's grace time ran out while the network was away: the old conversation is gone.
    page.lostConversation = true;
    return connect();
  }
  if (code === 1013) return retryLater();
  if (!opened) return explainRefusal();
  if (code === 1008) {
    forgetKey();
    return askForKey(describeClose(code, { opened }));
  }
  page.wanted = false;
  stopMicrophone();
  setConnected(false);
  notify(describeClose(code, { opened, idle: page.idleClosed }), code === 1000 ? "info" : "error");
}

/** What belonged to a session that is over: its answer in progress, its audio, its turn state. */
function forgetConversation() {
  page.response?.decoder?.close();
  page.opusEncoder?.close();
  Object.assign(page, { opusEncoder: null, wireFormat: null, outputOpus: false, responseIds: [] });
  showAudioFormat();
  setConnected(false);
  stopPlayback();
  Object.assign(page, {
    userSpeaking: false,
    speech: null,
    awaitingAnswer: false,
    turnEndedAt: null,
    response: null,
    queuedText: null,
  });
}

/** The connection dropped without a close frame (a network blip): the server keeps the session for
 * its grace time, and the answer goes on there. Dial again with the resume token, keeping what plays
 * and what is on screen; the server sends again exactly what the drop lost. */
function resumeSoon() {
  if (!page.resuming) {
    page.resuming = true;
    page.resumeTries = 0;
    setConnected(false);
    notify("The connection dropped. Reconnecting to the same conversation…", "error");
  }
  const delayMs = page.resumeTries === 0 ? 0 : Math.min(RESUME_MAX_MS, RESUME_FIRST_MS * 2 ** (page.resumeTries - 1));
  page.resumeTries += 1;
  page.retryTimer = setTimeout(() => page.wanted && client.connect(page.apiKey, { resume: true }), delayMs);
}

// A refused handshake looks the same to a page whatever the reason (the browser hides the HTTP
// status), so ask the server what it wants.
async function explainRefusal() {
  const status = await serverStatus();
  if (!page.wanted) return;
  if (status.auth) {
    forgetKey();
    askForKey("The server refused the API key. Enter a valid one.");
  } else if (status.status === "loading") {
    retryLater();
  } else {
    page.wanted = false;
    stopMicrophone();
    setConnected(false);
    notify(describeClose(1006, { opened: false }), "error");
  }
}

function retryLater() {
  if (page.retries >= RETRY_TRIES) {
    page.wanted = false;
    stopMicrophone();
    setConnected(false);
    notify("The server stayed busy. Press Connect to try again later.", "error");
    return;
  }
  const delayMs = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** page.retries);
  page.retries += 1;
  setConnected(false);
  notify(`Server busy, retrying in ${(delayMs / 1000).toFixed(1)} s…`, "error");
  page.retryTimer = setTimeout(() => page.wanted && connect(), delayMs);
}

// -- server events ------------------------------------------------------------------------------------------

function onEvent(event, receivedAt) {
  const handler = HANDLERS[event.type];
  if (handler) handler(event, receivedAt);
  refreshState();
}

const HANDLERS = {
  "session.created": ({ freeze_omni: extension }) => {
    page.retries = 0;
    if (page.resuming && extension?.resumed) {
      // The same session, with its settings: what the drop lost follows this event.
      page.resuming = false;
      page.sessionReady = true;
      window.__resumes += 1;
      notify("Reconnected: the conversation goes on.");
      return;
    }
    if (page.resuming) {
      // Not taken back (its grace time ran out, or the server restarted): this is a new conversation.
      page.resuming = false;
      page.lostConversation = true;
      forgetConversation();
    }
    page.responseIds = [];
    const { input, output } = audioFormats(page.audioChoice.format);
    const session = { type: "realtime", audio: { input: { format: input }, output: { format: output } } };
    if (ui.instructions.value.trim()) session.instructions = ui.instructions.value;
    client.send({ type: "session.update", session });
    page.sessionReady = true; // appends sent from now on follow the format declared above
    if (page.lostConversation) {
      page.lostConversation = false;
      notify("Connected again, but the conversation could not be taken back: this is a new one.", "error");
    } else if (page.micProblem) notify(`Connected. ${page.micProblem}`, "error");
    else notify("Connected. Speak, or type a message.");
  },
  "session.updated": ({ session }) => {
    page.outputRate = session?.audio?.output?.format?.rate || 24000;
    const opusIn = session?.audio?.input?.format?.type === OPUS_FORMAT;
    if (opusIn && !page.opusEncoder) startOpusEncoder();
    page.wireFormat = opusIn ? "opus" : "pcm16";
    page.outputOpus = session?.audio?.output?.format?.type === OPUS_FORMAT;
    showAudioFormat();
    if (page.instructionsSent) notify("Instructions applied.");
    page.instructionsSent = false;
  },
  "input_audio_buffer.speech_started": ({ audio_start_ms }, receivedAt) => {
    page.userSpeaking = true;
    page.speech = { startMs: audio_start_ms, endMs: null };
    // The server has paused the answer: flush what is queued, as OpenAI's guidance says. If the model
    // judges the speech a backchannel the answer resumes from where playback stopped (audio comes again).
    if (page.response && player?.sounding()) flushForPause(page.response, receivedAt);
  },
  "input_audio_buffer.speech_stopped": ({ audio_end_ms }) => {
    page.userSpeaking = false;
    page.awaitingAnswer = true;
    page.turnEndedAt = performance.now();
    if (page.speech) page.speech.endMs = audio_end_ms;
  },
  "input_audio_buffer.committed": () => {
    page.userSpeaking = false;
    page.awaitingAnswer = true;
    page.turnEndedAt ??= performance.now();
    const { startMs, endMs } = page.speech ?? {};
    const seconds = endMs > startMs ? ` (${((endMs - startMs) / 1000).toFixed(1)} s)` : "";
    addEntry("user", `Spoken turn${seconds}`).classList.add("spoken");
    page.speech = null;
  },
  "input_audio_buffer.cleared": () => {
    // The model judged it noise or a backchannel: no answer comes, the running one goes on.
    Object.assign(page, { userSpeaking: false, awaitingAnswer: false, turnEndedAt: null, speech: null });
  },
  "response.created": ({ response }) => {
    page.awaitingAnswer = false;
    page.responseIds.push(response.id);
    if (page.responseIds.length > 512) page.responseIds.splice(0, 256); // keeps index % 256 right
    const live = {
      id: response.id,
      itemId: null,
      bubble: null,
      firstStart: null,
      segmentStart: null, // when the audio playing now started (after a pause: when it resumed)
      heardBeforeS: 0, // audio heard before the last pause
      scheduledS: 0,
      decoder: null,
    };
    if (page.outputOpus) {
      live.decoder = new OpusAnswerDecoder({
        onSamples: (samples, rate) => scheduleAnswerAudio(live, samples, rate),
        onError: (error) => notify(`Could not decode the answer's audio (${error.message}).`, "error"),
      });
    }
    page.response = live;
  },
  "response.output_item.added": ({ response_id, item }) => {
    if (page.response?.id === response_id) page.response.itemId = item.id;
  },
  "response.output_audio_transcript.delta": ({ response_id, delta }) => {
    const response = liveResponse(response_id);
    if (!response) return;
    appendText(response.bubble, delta);
  },
  "response.output_audio.delta": ({ response_id, item_id, delta }) => {
    const response = liveResponse(response_id);
    if (!response) return;
    response.itemId = item_id;
    const samples = decodePcm16(delta);
    window.__answerBytes[response_id] = (window.__answerBytes[response_id] ?? 0) + 2 * samples.length;
    scheduleAnswerAudio(response, samples, page.outputRate);
  },
  "response.done": ({ response }, receivedAt) => {
    window.__responsesDone.push({ id: response.id, status: response.status });
    const current = page.response;
    page.response = null;
    if (current?.decoder) {
      // Completed: its last packets are still decoding, let them play. Otherwise: drop them.
      if (response.status === "completed") current.decoder.finish();
      else current.decoder.close();
    }
    if (response.status === "cancelled") {
      page.cancelled.add(response.id);
      stopForBargeIn(current, receivedAt);
    } else if (response.status === "failed") {
      const reason = response.status_details?.error?.message || "the answer failed";
      notify(`The answer failed: ${reason}`, "error");
    }
    if (page.queuedText !== null) {
      const text = page.queuedText;
      page.queuedText = null;
      sendText(text);
    }
  },
  error: ({ error }) => {
    if (error?.code === "idle_timeout") page.idleClosed = true;
    const aboutFormat = error?.code === "invalid_value" && String(error?.param ?? "format").includes("format");
    if (page.wireFormat === null && page.audioChoice?.format === "opus" && aboutFormat) {
      // A server without our Opus extension refused the session.update: ask again in pcm16.
      fallBackToPcm16("the server refused Opus");
      return;
    }
    if (error?.code === "response_cancel_not_active" && page.queuedText !== null) {
      // The answer ended before our cancel arrived: the typed message can go now.
      const text = page.queuedText;
      page.queuedText = null;
      sendText(text);
      return;
    }
    notify(describeError(error), "error");
  },
};

/** The running response if `id` is it, with its log entry made on first use. */
function liveResponse(id) {
  const response = page.response;
  if (!response || response.id !== id || page.cancelled.has(id)) return null;
  response.bubble ??= addEntry("assistant", "");
  return response;
}

function showFirstAudioLatency(response, startAt) {
  if (page.turnEndedAt === null) return;
  // Until the sound starts: arrival, plus the time it waits in the jitter buffer.
  const waitMs = Math.max(0, (startAt - audioContext.currentTime) * 1000);
  const latencyMs = performance.now() - page.turnEndedAt + waitMs;
  page.turnEndedAt = null;
  window.__firstAudioLatenciesMs.push(latencyMs);
  addMeta(response.bubble, `first audio ${Math.round(latencyMs)} ms`);
}

// -- barge-in ------------------------------------------------------------------------------------------------

function stopPlayback() {
  player?.stop();
}

/** What of the response the user has heard so far, in seconds of its audio. */
function heardSeconds(response) {
  const playing = response.segmentStart == null ? 0 : audioContext.currentTime - response.segmentStart;
  return response.heardBeforeS + Math.min(Math.max(playing, 0), response.scheduledS - response.heardBeforeS);
}

/** Paused by the server (speech into the answer): silence it now; resumed audio is scheduled afresh. */
function flushForPause(response, receivedAt) {
  response.heardBeforeS = heardSeconds(response);
  response.scheduledS = response.heardBeforeS;
  response.segmentStart = null;
  silenceNow(receivedAt);
}

/** Stop every scheduled source now; the test hooks record how fast the output really went silent. */
function silenceNow(receivedAt) {
  const wasSounding = player.sounding();
  const stopped = player.stop();
  if (stopped) {
    window.__lastStopLatencyMs = null;
    window.__lastStopCallMs = performance.now() - receivedAt;
    window.__lastStop = { sources: stopped, wasSounding };
    player.whenSilent().then((silentAt) => {
      window.__lastStopLatencyMs = silentAt === null ? null : silentAt - receivedAt;
    });
  }
  return stopped;
}

/** The server ended the answer early (the user barged in, or we cancelled): silence it now, in
 * this very event, and tell the server how much of it was heard (when it was still sounding: a paused
 * answer was flushed on `speech_started`, and the server knows where it paused). */
function stopForBargeIn(response, receivedAt) {
  const heardS = response ? heardSeconds(response) : 0;
  const stopped = silenceNow(receivedAt);
  if (!response?.bubble) return;
  addMeta(response.bubble, "interrupted");
  if (stopped && response.itemId) {
    const heardMs = Math.round(1000 * heardS);
    client.send({
      type: "conversation.item.truncate",
      item_id: response.itemId,
      content_index: 0,
      audio_end_ms: heardMs,
    });
  }
}

// -- typed turns and instructions --------------------------------------------------------------------------

function sendText(text) {
  if (page.response) {
    // One answer at a time: cancel the running one, send this when it has ended.
    page.queuedText = text;
    client.send({ type: "response.cancel" });
    return;
  }
  addEntry("user", text);
  client.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  client.send({ type: "response.create" });
  page.awaitingAnswer = true;
  page.turnEndedAt = performance.now();
  refreshState();
}

// -- wiring -----------------------------------------------------------------------------------------------------

// A key typed into the visible key box counts, whether the user presses Connect, "Use key" or Enter.
function takeTypedKey() {
  const typed = ui.key.value.trim();
  if (ui.keyForm.hidden || !typed) return;
  page.apiKey = typed;
  sessionStorage.setItem("apiKey", typed);
}

async function startConnecting() {
  takeTypedKey();
  ui.keyForm.hidden = true;
  page.retries = 0;
  await ensureAudio();
  page.audioChoice ??= await chooseAudioFormat();
  connect();
  startMicrophoneOnce();
}

ui.connect.addEventListener("click", async () => {
  if (page.wanted || client.isOpen) return disconnect();
  await startConnecting();
});

ui.keyForm.addEventListener("submit", async (submit) => {
  submit.preventDefault();
  await startConnecting();
});

ui.textForm.addEventListener("submit", (submit) => {
  submit.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  if (!page.sessionReady) return notify("Connect first, then send your message.", "error");
  ui.text.value = "";
  sendText(text);
});

// Muting in the middle of a sentence would leave the server waiting for its end: drop it instead.
ui.mic.addEventListener("change", () => {
  if (!ui.mic.checked && page.userSpeaking) client.send({ type: "input_audio_buffer.clear" });
});

ui.instructionsForm.addEventListener("submit", (submit) => {
  submit.preventDefault();
  if (!page.sessionReady) return notify("Instructions will be sent when you connect.");
  page.instructionsSent = true;
  client.send({ type: "session.update", session: { type: "realtime", instructions: ui.instructions.value } });
});

refreshState();
