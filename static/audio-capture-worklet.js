// Microphone capture on the audio thread: resample from the AudioContext's rate (often 48 kHz)
// to the rate the server is told (24 kHz), convert to 16-bit PCM, and post chunks of
// `chunkMs` to the page. Runs in the AudioWorkletGlobalScope, where `sampleRate` is global.

class CapturePcm16 extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkMs } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.position = 0; // where the next output sample falls, in input samples of this block
    this.previous = 0; // the last input sample of the block before (for interpolation)
    this.lastRaw = null; // the last raw sample, for the smoothing filter
    this.chunk = new Int16Array(Math.round((targetRate * chunkMs) / 1000));
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no microphone yet (or it went away): keep the node alive
    // When downsampling, a 2-tap average first damps what lies above the new Nyquist
    // frequency, so that hiss does not fold back into the speech band.
    const input = this.step > 1 ? this.smooth(channel) : channel;
    const last = input.length - 1;
    let t = this.position;
    // Linear interpolation between neighbours; t = -1 is `previous`, the end of the last block.
    for (; t < last; t += this.step) {
      const i = Math.floor(t);
      const a = i < 0 ? this.previous : input[i];
      const b = input[i + 1];
      this.emit(a + (b - a) * (t - i));
    }
    this.position = t - input.length;
    this.previous = input[last];
    return true;
  }

  smooth(channel) {
    const out = new Float32Array(channel.length);
    let before = this.lastRaw ?? channel[0];
    for (let i = 0; i < channel.length; i++) {
      out[i] = 0.5 * (channel[i] + before);
      before = channel[i];
    }
    this.lastRaw = before;
    return out;
  }

  emit(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.chunk.length) {
      // Transfer a copy: the buffer changes hands without copying again on the way out.
      const out = this.chunk.slice();
      this.port.postMessage(out, [out.buffer]);
      this.filled = 0;
    }
  }
}

registerProcessor("capture-pcm16", CapturePcm16);
