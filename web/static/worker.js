// The generate loop in a Web Worker, as charlstm's runtime runs it: prime the state on the prompt one character
// at a time, then sample, feed back, repeat, with the LSTM state (h, c) carried from step to step (never a
// window re-fed). One onnxruntime-web session on its WASM backend; tensors made once and reused.
import * as ort from "./ort/ort.wasm.min.mjs";

const GREEDY_BELOW = 2 ** -23;  // float32's resolution: a lower temperature picks the likeliest, as the runtime does
const YIELD_MS = 20;  // work between pauses that let a "stop" message in
const POST_MS = 30;  // text is posted to the page at most this often

let session = null, manifest = null, stop = false;
let tokenName, hName, cName, logitsName, hOutName, cOutName;

function sfc32(seed) {  // a small seeded generator: the same seed, the same text in this browser
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0;
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b | 0) + d | 0;
    d = d + 1 | 0; a = b ^ b >>> 9; b = c + (c << 3) | 0; c = c << 21 | c >>> 11; c = c + t | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) next();
  return next;
}

function pick(logits, temperature, topK, topP, random) {
  const n = logits.length;
  if (temperature < GREEDY_BELOW) {
    let best = 0;
    for (let i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i] / temperature);
  let probs = new Float64Array(n), total = 0;
  for (let i = 0; i < n; i++) { probs[i] = Math.exp(logits[i] / temperature - max); total += probs[i]; }
  for (let i = 0; i < n; i++) probs[i] /= total;
  if (topK && topK < n) {
    const kth = [...probs].sort((x, y) => y - x)[topK - 1];
    for (let i = 0; i < n; i++) if (probs[i] < kth) probs[i] = 0;
  }
  if (topP && topP < 1) {
    const order = [...probs.keys()].sort((x, y) => probs[y] - probs[x]);
    let before = 0;
    for (const i of order) { const p = probs[i]; if (before >= topP) probs[i] = 0; before += p; }
  }
  total = probs.reduce((s, p) => s + p, 0);
  let u = (1 - random()) * total, cdf = 0;  // (0, total]: the first id whose cumulative probability reaches u
  for (let i = 0; i < n; i++) { cdf += probs[i]; if (probs[i] > 0 && cdf >= u) return i; }
  return probs.findLastIndex((p) => p > 0);
}

async function load({ manifest: m, file, threads }) {
  const started = performance.now();
  manifest = m;
  ({ token: tokenName, h: hName, c: cName } = m.inputs);
  ({ logits: logitsName, h: hOutName, c: cOutName } = m.outputs);
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = threads;
  const response = await fetch(file);
  if (!response.ok) throw new Error(`${file}: ${response.status} ${response.statusText}`);
  session = await ort.InferenceSession.create(new Uint8Array(await response.arrayBuffer()),
                                              { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const missing = [tokenName, hName, cName].filter((n) => !session.inputNames.includes(n));
  if (missing.length) throw new Error(`${file} lacks the inputs ${missing.join(", ")} that model.json lists`);
  postMessage({ type: "ready", version: ort.env.versions?.web ?? "", threads, ms: performance.now() - started });
}

async function generate({ prompt, temperature, length, topK, topP, seed }) {
  const stoi = new Map(manifest.vocab.map((ch, i) => [ch, i]));
  const { layers, units } = manifest.model;
  const zeros = () => new ort.Tensor("float32", new Float32Array(layers * units), [layers, 1, units]);
  let h = zeros(), c = zeros(), logits = null;
  const token = new ort.Tensor("int64", new BigInt64Array(1), [1]);
  const step = async (id) => {
    token.data[0] = BigInt(id);
    const out = await session.run({ [tokenName]: token, [hName]: h, [cName]: c });
    h = out[hOutName]; c = out[cOutName]; logits = out[logitsName].data;
  };
  const ids = [...(prompt || "\n")].map((ch) => stoi.get(ch) ?? 0);
  stop = false;
  const random = sfc32(seed);
  const started = performance.now();
  let pending = "", made = 0, lastPost = started, lastYield = started;
  for (const id of ids) await step(id);
  while (made < length && !stop) {
    const id = pick(logits, temperature, topK, topP, random);
    pending += manifest.vocab[id];
    made += 1;
    if (made < length) await step(id);
    const now = performance.now();
    if (now - lastPost > POST_MS) {
      postMessage({ type: "text", text: pending, characters: made, rate: made / ((now - started) / 1000) });
      pending = ""; lastPost = now;
    }
    if (now - lastYield > YIELD_MS) {  // let a stop message in
      await new Promise((r) => setTimeout(r, 0));
      lastYield = performance.now();
    }
  }
  const ms = performance.now() - started;
  if (pending) postMessage({ type: "text", text: pending, characters: made, rate: made / (ms / 1000) });
  postMessage({ type: "done", characters: made, ms, rate: made / (ms / 1000), stopped: stop });
}

onmessage = async ({ data }) => {
  if (data.type === "stop") { stop = true; return; }
  try {
    if (data.type === "load") await load(data);
    else if (data.type === "generate") await generate(data);
  } catch (e) {
    postMessage({ type: "error", message: e.message || String(e) });
  }
};
