// The page: settings, the text as it comes, and the model's facts. All generating happens in worker.js, so the
// page never freezes. Settings come from the URL too, so a link reproduces a generation:
//   ?prompt=ROMEO%3A&temperature=0&length=200&seed=1&autostart=1      (threads=2 where the page is cross-origin
//   isolated; file=model.onnx picks the graph)
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let manifest = null, vocab = null, running = false;

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function fail(message) {
  status(`error: ${message}`, true);
  $("go").disabled = true; $("stop").disabled = true; running = false;
  document.body.dataset.done = "1";
}

const worker = new Worker("worker.js", { type: "module" });
worker.onerror = (e) => fail(`the worker failed to start (${e.message || "see the console"}): this browser needs ` +
                             "module workers and WebAssembly");
worker.onmessage = ({ data }) => {
  if (data.type === "ready") {
    $("go").disabled = false;
    status(`ready: onnxruntime-web ${data.version}, ${data.threads} WASM thread(s), loaded in ${data.ms.toFixed(0)} ms`);
    if (params.get("autostart") === "1") generate();
  } else if (data.type === "text") {
    $("output").textContent += data.text;
    status(`${data.characters} characters, ${data.rate.toFixed(0)} characters/s`);
  } else if (data.type === "done") {
    running = false;
    $("go").disabled = false; $("stop").disabled = true;
    status(`${data.characters} characters in ${(data.ms / 1000).toFixed(2)} s, ${data.rate.toFixed(0)} characters/s ` +
           `(${(1000 * data.ms / Math.max(data.characters, 1)).toFixed(0)} µs a character)` +
           (data.stopped ? ", stopped" : ""));
    document.body.dataset.done = "1";
    document.body.dataset.usPerChar = String(1000 * data.ms / Math.max(data.characters, 1));
  } else if (data.type === "error") {
    fail(data.message);
  }
};

function number(id) {
  const v = $(id).value;
  return v === "" ? undefined : Number(v);
}

function generate() {
  if (!manifest || running) return;
  const prompt = $("prompt").value;
  const unknown = [...new Set(prompt)].filter((ch) => !vocab.has(ch)).sort();
  if (unknown.length) {
    status(`the prompt has ${unknown.length} character(s) outside the model's vocabulary: ` +
           unknown.map((c) => JSON.stringify(c)).join(", ") + "; remove them", true);
    document.body.dataset.done = "1";
    return;
  }
  const temperature = number("temperature") ?? manifest.sampling.temperature;
  const length = number("length") ?? manifest.sampling.length;
  if (!(temperature >= 0 && temperature <= 100) || !(length >= 0)) {
    status("temperature must be from 0 to 100 and length at least 0", true);
    return;
  }
  running = true;
  document.body.dataset.done = "";
  $("go").disabled = true; $("stop").disabled = false;
  $("prompt-echo").textContent = prompt;
  $("output").textContent = "";
  worker.postMessage({ type: "generate", prompt, temperature, length, topK: number("top_k"), topP: number("top_p"),
                       seed: number("seed") ?? Math.floor(Math.random() * 2 ** 31) });
}

async function start() {
  for (const id of ["prompt", "temperature", "length", "top_k", "top_p", "seed"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  let response;
  try {
    response = await fetch("model.json");
  } catch (e) {
    return fail(`cannot fetch model.json (${e.message}): serve this folder over http, e.g. python -m http.server`);
  }
  if (!response.ok) return fail(`model.json: ${response.status} ${response.statusText}`);
  manifest = await response.json();
  vocab = new Set(manifest.vocab);
  const m = manifest.model, e = manifest.evaluation;
  $("facts").textContent = `${manifest.name}: ${m.layers} × LSTM(${m.units}), ${manifest.vocab.length} characters` +
    (m.parameters ? `, ${(m.parameters / 1e6).toFixed(2)}M parameters` : "") +
    (e ? `, ${e.nats_per_char.toFixed(4)} nats/char on ${e.corpus}'s held-out text` : "");
  $("temperature").placeholder = manifest.sampling.temperature;
  $("length").placeholder = manifest.sampling.length;
  const threads = Math.min(Number(params.get("threads") || 1), self.crossOriginIsolated ? 16 : 1);
  worker.postMessage({ type: "load", manifest, file: params.get("file") || "model.onnx", threads });
}

$("go").onclick = generate;
$("stop").onclick = () => worker.postMessage({ type: "stop" });
start();
