// Opus through WebCodecs: the microphone encoded to raw 20 ms packets (sent one per binary frame),
// and the answer's packets decoded for the player. This is the server's `audio/x-opus` extension:
// about 25 kbit/s each way instead of ~500 kbit/s of base64 pcm16. Browsers without WebCodecs Opus
// keep pcm16 (see app.js).

export const OPUS_FORMAT = "audio/x-opus";
export const OPUS_BITRATE = 24000;
const ENCODE_RATE = 24000; // what the capture worklet delivers
const DECODE_RATE = 48000; // Opus's own clock; the player resamples
const FRAME_US = 20000;

const ENCODER_CONFIG = {
  codec: "opus",
  sampleRate: ENCODE_RATE,
  numberOfChannels: 1,
  bitrate: OPUS_BITRATE,
  opus: { format: "opus", frameDuration: FRAME_US }, // raw packets, not Ogg
};
const DECODER_CONFIG = { codec: "opus", sampleRate: DECODE_RATE, numberOfChannels: 1 };

/** Whether this browser can encode and decode Opus with WebCodecs (false on any doubt). */
export async function opusSupported() {
  if (typeof AudioEncoder === "undefined" || typeof AudioDecoder === "undefined") return false;
  try {
    const [encoder, decoder] = await Promise.all([
      AudioEncoder.isConfigSupported(ENCODER_CONFIG),
      AudioDecoder.isConfigSupported(DECODER_CONFIG),
    ]);
    return Boolean(encoder.supported && decoder.supported);
  } catch {
    return false;
  }
}

/** The microphone's 24 kHz pcm16 chunks in, `onPacket(Uint8Array)` for each Opus packet out. */
export class OpusMicEncoder {
  constructor({ onPacket, onError }) {
    this.samplesIn = 0;
    this.encoder = new AudioEncoder({
      output: (chunk) => {
        const packet = new Uint8Array(chunk.byteLength);
        chunk.copyTo(packet);
        onPacket(packet);
      },
      error: (error) => onError(error),
    });
    this.encoder.configure(ENCODER_CONFIG);
  }

  encode(pcm16) {
    if (this.encoder.state !== "configured") return;
    const data = new AudioData({
      format: "s16",
      sampleRate: ENCODE_RATE,
      numberOfChannels: 1,
      numberOfFrames: pcm16.length,
      timestamp: Math.round((this.samplesIn * 1e6) / ENCODE_RATE),
      data: pcm16,
    });
    this.samplesIn += pcm16.length;
    this.encoder.encode(data);
    data.close();
  }

  close() {
    if (this.encoder.state !== "closed") this.encoder.close();
  }
}

/** One response's packets in (in order), `onSamples(Float32Array, rate)` out. A decoder per response,
 * as the server encodes each response as a stream of its own. */
export class OpusAnswerDecoder {
  constructor({ onSamples, onError }) {
    this.packetsIn = 0;
    this.decoder = new AudioDecoder({
      output: (data) => {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
        const rate = data.sampleRate;
        data.close();
        onSamples(samples, rate);
      },
      error: (error) => onError(error),
    });
    this.decoder.configure(DECODER_CONFIG);
  }

  decode(packet) {
    if (this.decoder.state !== "configured") return;
    const timestamp = this.packetsIn * FRAME_US;
    this.packetsIn += 1;
    this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp, data: packet }));
  }

  /** Let the last packets out, then free the decoder. */
  async finish() {
    if (this.decoder.state !== "configured") return;
    try {
      await this.decoder.flush();
    } catch {
      // closed meanwhile (a barge-in): nothing left to play anyway
    }
    this.close();
  }

  /** Drop whatever is still being decoded. */
  close() {
    if (this.decoder.state !== "closed") this.decoder.close();
  }
}

/** `[response number, output index, packet]` of a binary answer frame (see the server's README). */
export function parseFrame(bytes) {
  return [bytes[0], bytes[1], bytes.subarray(2)];
}
