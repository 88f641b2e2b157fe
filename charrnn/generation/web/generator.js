// charrnn in the browser: a model exported by `charrnn-export --format=web`, run by LiteRT.js
// (the TFLite export's one-step signature, the LSTM state carried from step to step).
//
//   import {load} from './generator.js';
//   const model = await load('.');                 // the exported folder's URL
//   const text = await model.generate({prime: 'ROMEO: ', numChars: 200, temperature: 0.5,
//                                      topK: 0, topP: 1, greedy: false, seed: 1,
//                                      onChar: (c) => console.log(c)});
//
// Sampling behaves as charrnn-sample's: the prime's characters must be in the vocabulary
// (an Error names those that are not), greedy takes the most likely character (the same
// text as `charrnn-sample --greedy`), top-k and top-p filter as the Sampler does, and a seed
// gives the same text each time (the browser's own generator, not TensorFlow's: the same
// seed gives other text than charrnn-sample's).
import {loadAndCompile, loadLiteRt, Tensor} from './runtime/litert/index.js';

let runtime = null; // LiteRT.js loads its WebAssembly once per page

export async function load(url = '.') {
  const base = new URL(url.endsWith('/') ? url : url + '/', document.baseURI);
  runtime = runtime || loadLiteRt(new URL('runtime/wasm/', import.meta.url).href);
  await runtime;
  const info = await (await fetch(new URL('model.json', base))).json();
  const model = await loadAndCompile(new URL('model.tflite', base).href, {accelerator: 'wasm'});
  return new Generator(model, info);
}

// A seeded generator of uniform numbers in [0, 1) (mulberry32 over a 32-bit hash of the seed).
function random(seed) {
  let state = 0x9e3779b9 ^ Number(BigInt.asUintN(32, BigInt(seed)));
  state ^= Number(BigInt.asUintN(32, BigInt(seed) >> 32n));
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Generator {
  constructor(model, info) {
    this.model = model;
    this.chars = Array.from(info.chars);
    this.index = new Map(this.chars.map((c, i) => [c, i]));
    this.stateShape = info.state_shape; // [layers * tensors per layer, 1, units]
  }

  // The ids of `text`; an Error naming the characters the model does not know.
  encode(text) {
    const chars = Array.from(text);
    const unknown = [...new Set(chars.filter((c) => !this.index.has(c)))];
    if (unknown.length) {
      throw new Error(`${unknown.length} character(s) not in the model's vocabulary: ` +
                      unknown.map((c) => JSON.stringify(c)).join(', '));
    }
    return chars.map((c) => this.index.get(c));
  }

  // One character through the model: its logits (Float32Array) and the new state.
  async step(id, state) {
    const ids = new Tensor(new Int32Array([id]), [1]);
    const stateIn = new Tensor(state, this.stateShape);
    const out = await this.model.run('step', {ids, state: stateIn});
    ids.delete();
    stateIn.delete();
    const logits = out.logits.toTypedArray().slice();
    const next = out.state.toTypedArray().slice();
    out.logits.delete();
    out.state.delete();
    return [logits, next];
  }

  // The logits of every character after `prime` (in order), for tests and tools.
  async logits(prime) {
    let state = new Float32Array(this.stateShape.reduce((a, b) => a * b, 1));
    const all = [];
    for (const id of this.encode(prime)) {
      let logits;
      [logits, state] = await this.step(id, state);
      all.push(Array.from(logits));
    }
    return all;
  }

  async generate({prime, numChars = 500, temperature = 0.5, topK = 0, topP = 1, greedy = false,
                  seed = null, onChar = null}) {
    if (!prime) throw new Error('the prime is empty; type at least one character to start from');
    if (!(Number.isInteger(numChars) && numChars >= 0 && numChars <= 1000000)) {
      throw new Error('the length must be a whole number of characters, between 0 and 1000000');
    }
    if (!(temperature >= 1e-6 && temperature <= 1e6)) throw new Error('temperature must be between 1e-06 and 1e+06');
    if (!(topP > 0 && topP <= 1)) throw new Error('top_p must be in (0, 1]');
    if (!(Number.isInteger(topK) && topK >= 0)) throw new Error('top_k must be a whole number, 0 or more (0 keeps every character)');
    const ids = this.encode(prime);
    const draw = random(seed === null || seed === '' ? Math.floor(Math.random() * 2 ** 32) : seed);
    let state = new Float32Array(this.stateShape.reduce((a, b) => a * b, 1));
    let logits;
    for (const id of ids) [logits, state] = await this.step(id, state);
    let text = '';
    for (let n = 0; n < numChars; n++) {
      const id = greedy ? argmax(logits) : sample(logits, temperature, topK, topP, draw);
      text += this.chars[id];
      if (onChar) onChar(this.chars[id]);
      if (n + 1 < numChars) [logits, state] = await this.step(id, state);
    }
    return prime + text;
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

// A draw from softmax(logits / temperature), restricted as the Sampler's filter_logits
// restricts it: to the topK largest (0: all) and to the smallest set of largest whose
// probability reaches topP, every character tied with the last one kept kept too.
function sample(logits, temperature, topK, topP, draw) {
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const scaled = order.map((i) => logits[i] / temperature);
  const top = scaled[0];
  const weights = scaled.map((v) => Math.exp(v - top));
  const total = weights.reduce((a, b) => a + b, 0);
  let keep = topK > 0 ? Math.min(topK, order.length) : order.length;
  if (topP < 1) {
    let before = 0;
    let count = 0;
    for (const w of weights) {
      if (before >= topP) break;
      before += w / total;
      count++;
    }
    keep = Math.min(keep, Math.max(count, 1));
  }
  while (keep < order.length && scaled[keep] === scaled[keep - 1]) keep++; // ties at the threshold stay
  const kept = weights.slice(0, keep);
  let u = draw() * kept.reduce((a, b) => a + b, 0);
  for (let i = 0; i < keep; i++) {
    u -= kept[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}
