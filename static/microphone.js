// The microphone: getUserMedia with the browser's echo canceller on (the bot's own voice must
// not reach the server as a barge-in), then the capture worklet, which hands us pcm16 chunks.

const WORKLET_URL = new URL("./audio-capture-worklet.js", import.meta.url);
const workletLoaded = new WeakMap(); // AudioContext -> Promise: load the module once per context

/** A readable reason when the browser offers no microphone API at all. */
export function microphoneUnavailableReason() {
  if (!window.isSecureContext) {
    return "The microphone needs https (or localhost). Typed messages still work.";
  }
  if (!navigator.mediaDevices?.getUserMedia) return "This browser offers no microphone access.";
  return null;
}

/** Start capturing; `onChunk(Int16Array)` gets `chunkMs` of audio at `rate`. Returns `{stop()}`. */
export async function startMicrophone(context, { rate, chunkMs = 40, onChunk }) {
  if (!workletLoaded.has(context)) workletLoaded.set(context, context.audioWorklet.addModule(WORKLET_URL));
  await workletLoaded.get(context);
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = context.createMediaStreamSource(stream);
  // No outputs: the node is a sink of its own, so the audio thread runs it without it being
  // connected to the speakers (the user must not hear themselves).
  const capture = new AudioWorkletNode(context, "capture-pcm16", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    channelCount: 1,
    channelCountMode: "explicit",
    processorOptions: { targetRate: rate, chunkMs },
  });
  capture.port.onmessage = (message) => onChunk(message.data);
  source.connect(capture);
  return {
    stop() {
      capture.port.onmessage = null;
      source.disconnect();
      for (const track of stream.getTracks()) track.stop(); // turns the browser's mic indicator off
    },
  };
}
