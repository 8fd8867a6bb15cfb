// Playback of answer audio: every delta becomes an AudioBufferSourceNode started exactly where
// the one before ends, so deltas join without gaps. A stream that starts (or has run dry) begins
// `cushionS` in the future: that cushion is the jitter buffer that absorbs uneven arrival.
// Everything scheduled is remembered, so a barge-in can stop all of it at once.

export class Player {
  constructor(context, { cushionS = 0.1, onChange = () => {} } = {}) {
    this.context = context;
    this.cushionS = cushionS;
    this.onChange = onChange; // called when playback starts or drains
    // All sources play through an analyser: it costs nothing and lets us verify that a stop
    // made the output really silent (not just that stop() was called).
    this.output = context.createAnalyser();
    this.output.fftSize = 256; // ~5 ms at 48 kHz: a short window sees silence quickly
    this.output.connect(context.destination);
    // A silent source that always plays keeps the analyser running while no answer does, so it
    // reports the silence instead of the last frame it saw.
    const keepAlive = context.createConstantSource();
    keepAlive.offset.value = 0;
    keepAlive.connect(this.output);
    keepAlive.start();
    this.sources = new Set();
    this.nextTime = 0;
  }

  get playing() {
    return this.sources.size > 0;
  }

  /** Queue samples at `rate` (16-bit integers, or floats in [-1, 1] from a decoder); returns the
   * context time at which they will start. */
  enqueue(samples, rate) {
    const buffer = this.context.createBuffer(1, samples.length, rate); // resampled by the context
    const channel = buffer.getChannelData(0);
    if (samples instanceof Float32Array) channel.set(samples);
    else for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    const now = this.context.currentTime;
    if (this.nextTime < now) this.nextTime = now + this.cushionS;
    const startAt = this.nextTime;
    source.start(startAt);
    this.nextTime += buffer.duration;
    const wasPlaying = this.playing;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      if (!this.playing) this.onChange();
    };
    if (!wasPlaying) this.onChange();
    return startAt;
  }

  /** Stop what plays and everything scheduled after it, now. Returns how many sources it stopped. */
  stop() {
    const count = this.sources.size;
    for (const source of this.sources) {
      source.onended = null;
      source.stop();
      source.disconnect(); // off the graph at once: nothing of it reaches the next render quantum
    }
    this.sources.clear();
    this.nextTime = 0;
    if (count) this.onChange();
    return count;
  }

  /** Whether sound is coming out right now (the last few milliseconds of output). */
  sounding() {
    const samples = new Float32Array(this.output.fftSize);
    this.output.getFloatTimeDomainData(samples);
    return samples.some((x) => Math.abs(x) >= 1e-4);
  }

  /** Resolves with `performance.now()` at the first moment the output is found silent
   * (null if it is still sounding after `timeoutMs`). */
  whenSilent(timeoutMs = 2000) {
    const deadline = performance.now() + timeoutMs;
    return new Promise((resolve) => {
      const check = () => {
        if (!this.sounding()) resolve(performance.now());
        else if (performance.now() > deadline) resolve(null);
        else setTimeout(check, 1);
      };
      check();
    });
  }
}

/** Decode a base64 delta of little-endian 16-bit PCM. */
export function decodePcm16(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  // Int16Array reads the platform's byte order: little-endian on every browser platform in use.
  return new Int16Array(bytes.buffer, 0, bytes.length >> 1);
}

/** Encode 16-bit PCM samples as base64, for `input_audio_buffer.append`. */
export function encodePcm16(pcm16) {
  const bytes = new Uint8Array(pcm16.buffer, pcm16.byteOffset, pcm16.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}
