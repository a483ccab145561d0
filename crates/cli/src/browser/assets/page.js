// The in-browser page (`cargo xtask export --web DIR`, or `serve`'s /local/): photos and webcam
// frames are read into pixels here, preprocessed as the Rust pipeline does it (preprocess.js) and
// classified by ONNX Runtime Web in this page. Requests go only to this page's own origin, for
// its files, the model and the runtime (GET); none carries an image. Plain JavaScript, no build.
import { faceInput, inputValues } from "./preprocess.js";

const $ = (id) => document.getElementById(id);
const state = { config: null, ort: null, sessions: new Map(), photos: [], webcam: null };

// Smallest square, in image pixels, that a drag selects; shorter drags are clicks.
const MIN_BOX = 8;

// Policy violations, for people (the console) and the browser test (a data attribute).
const violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  violations.push(`${event.violatedDirective} ${event.blockedURI}`);
  document.body.dataset.cspViolations = violations.join("\n");
});

function status(text) { $("status").textContent = text; }
function percent(p) { return (100 * p).toFixed(1) + "%"; }

// The index of the largest probability, the first of equals; NaN never wins (as the Rust side).
function topClass(probabilities) {
  let best = -1;
  probabilities.forEach((p, i) => { if (!Number.isNaN(p) && (best < 0 || p > probabilities[best])) best = i; });
  return best < 0 ? 0 : best;
}

function currentModel() {
  return state.config.models[Number($("model").value) || 0];
}

// The page only knows one preprocessing: refuse a model that asks for another.
function checkModel(model) {
  const p = model.preprocessing || {};
  if (model.error) return model.error;
  if (p.color !== "grayscale" || !String(p.resize || "").startsWith("Catmull-Rom")
      || typeof p.divide_by !== "number" || !String(p.layout || "").startsWith("NCHW")) {
    return "this model asks for a preprocessing this page does not do: " + JSON.stringify(p);
  }
  return null;
}

async function session(model) {
  if (!state.sessions.has(model.onnx)) {
    const url = new URL(model.onnx, document.baseURI).href;
    state.sessions.set(model.onnx, state.ort.InferenceSession.create(url, {
      executionProviders: ["wasm"],
    }));
  }
  return state.sessions.get(model.onnx);
}

// Classifies the region `box` (image pixels, or null for the whole image) of RGBA pixels.
async function classify(model, rgba, width, height, box) {
  const side = model.input_side;
  const pixels = faceInput(rgba, width, height, box, side);
  const input = new state.ort.Tensor("float32", inputValues(pixels, model.preprocessing.divide_by), [1, 1, side, side]);
  const outputs = await (await session(model)).run({ [model.input]: input });
  const probabilities = Array.from(outputs[model.output].data);
  return { pixels, probabilities, top: topClass(probabilities) };
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// One result: the image (a canvas at its own size, scaled by CSS), the square it was classified
// on, and a bar per class. Dragging on the image classifies the dragged square instead.
class ResultView {
  constructor(className, onBox) {
    this.block = document.createElement("section");
    this.block.className = "result " + className;
    this.stage = document.createElement("div");
    this.stage.className = "stage drawable";
    this.canvas = document.createElement("canvas");
    this.frame = document.createElement("div");
    this.frame.className = "face-box";
    this.label = document.createElement("span");
    this.label.className = "face-label";
    this.frame.appendChild(this.label);
    this.stage.append(this.canvas, this.frame);
    this.card = document.createElement("div");
    this.card.className = "faces";
    this.block.append(this.stage, this.card);
    this.box = null;
    this.onBox = onBox;
    this.listen();
  }

  // Image pixels under a pointer event.
  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: Math.min(Math.max(0, (event.clientX - rect.left) * this.canvas.width / rect.width), this.canvas.width),
      y: Math.min(Math.max(0, (event.clientY - rect.top) * this.canvas.height / rect.height), this.canvas.height),
    };
  }

  // The square from the drag's start towards `end`, kept inside the image, in whole pixels.
  square(start, end) {
    const w = this.canvas.width, h = this.canvas.height;
    const dx = end.x - start.x, dy = end.y - start.y;
    let size = Math.max(Math.abs(dx), Math.abs(dy));
    const room = Math.min(dx < 0 ? start.x : w - start.x, dy < 0 ? start.y : h - start.y);
    size = Math.floor(Math.min(size, room));
    const x = Math.round(dx < 0 ? start.x - size : start.x);
    const y = Math.round(dy < 0 ? start.y - size : start.y);
    return { x: Math.max(0, Math.min(x, w - size)), y: Math.max(0, Math.min(y, h - size)), width: size, height: size };
  }

  listen() {
    let start = null;
    this.stage.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      start = this.point(event);
      this.stage.setPointerCapture(event.pointerId);
      event.preventDefault();
    });
    this.stage.addEventListener("pointermove", (event) => {
      if (!start) return;
      this.drawFrame(this.square(start, this.point(event)), true);
    });
    const finish = (event) => {
      if (!start) return;
      const box = this.square(start, this.point(event));
      start = null;
      if (box.width >= MIN_BOX) {
        this.box = box;
        this.onBox(this);
      } else {
        this.drawFrame(this.box, false);
      }
    };
    this.stage.addEventListener("pointerup", finish);
    this.stage.addEventListener("pointercancel", () => { start = null; this.drawFrame(this.box, false); });
  }

  // The frame around `box` (the whole image for null), in percent of the shown image.
  drawFrame(box, dragging) {
    const w = this.canvas.width, h = this.canvas.height;
    const b = box || { x: 0, y: 0, width: w, height: h };
    this.frame.style.left = (100 * b.x / w) + "%";
    this.frame.style.top = (100 * b.y / h) + "%";
    this.frame.style.width = (100 * b.width / w) + "%";
    this.frame.style.height = (100 * b.height / h) + "%";
    this.frame.classList.toggle("dragging", dragging);
    this.frame.classList.toggle("whole", !box);
  }

  // Copies a frame (an ImageBitmap, a video) onto the canvas at its own size; its pixels.
  draw(source, width, height) {
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.box = null;
    }
    const context = this.canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(source, 0, 0);
    return context.getImageData(0, 0, width, height).data;
  }

  show(model, result) {
    const names = model.class_names;
    this.drawFrame(this.box, false);
    this.label.textContent = `${names[result.top]} ${percent(result.probabilities[result.top])}`;
    const title = document.createElement("h2");
    title.innerHTML = '<span class="top-class"></span>';
    title.querySelector(".top-class").textContent = names[result.top];
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = this.box
      ? `the square at ${this.box.x}, ${this.box.y}, ${this.box.width} px wide`
      : "the whole image; drag a square on it around a face to classify only that";
    const rows = names.map((name, i) => {
      const p = result.probabilities[i];
      const row = document.createElement("div");
      row.className = "class-bar" + (i === result.top ? " top" : "");
      row.dataset.class = name;
      row.innerHTML = '<span class="name"></span><div class="bar"><div></div></div><span class="percent"></span>';
      row.querySelector(".name").textContent = name;
      row.querySelector(".bar > div").style.width = percent(p);
      row.querySelector(".percent").textContent = percent(p);
      return row;
    });
    const children = [title, hint, ...rows];
    if (this.box) {
      const whole = document.createElement("button");
      whole.type = "button";
      whole.className = "whole-image";
      whole.textContent = "Use the whole image";
      whole.addEventListener("click", () => { this.box = null; this.onBox(this); });
      children.push(whole);
    }
    this.card.replaceChildren(...children);
    // For the browser test: what was classified, exactly.
    Object.assign(this.block.dataset, {
      probabilities: JSON.stringify(result.probabilities),
      top: names[result.top],
      face: base64(result.pixels),
      box: this.box ? JSON.stringify(this.box) : "",
    });
  }
}

async function classifyView(view, rgba) {
  const model = currentModel();
  const result = await classify(model, rgba, view.canvas.width, view.canvas.height, view.box);
  view.show(model, result);
}

async function showPhotos() {
  const results = $("results");
  results.querySelectorAll(".photo-result").forEach((old) => old.remove());
  status("");
  for (const file of state.photos) {
    const view = new ResultView("photo-result", (v) => classifyView(v, v.rgba).catch((err) => status(err.message)));
    view.block.dataset.name = file.name;
    try {
      // The pixels as stored: no colour management, no premultiplied alpha, so that they are
      // the values the server's decoder reads.
      const bitmap = await createImageBitmap(file, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
      view.rgba = view.draw(bitmap, bitmap.width, bitmap.height);
      bitmap.close();
      results.appendChild(view.block);
      await classifyView(view, view.rgba);
    } catch (err) {
      status(`${file.name}: ${err.message}`);
      view.block.remove();
    }
  }
}

function takePhotos(files) {
  state.photos = Array.from(files).filter((file) => /^image\/(png|jpeg)$/.test(file.type) || file.type === "");
  if (state.photos.length === 0) {
    status("Only PNG and JPEG images can be read.");
    return;
  }
  showPhotos();
}

// The webcam: a frame is classified at each animation frame once the previous one is done; the
// frame rate shown is the number of frames classified in the last second.
async function toggleWebcam() {
  if (state.webcam) {
    state.webcam.running = false;
    state.webcam.stream.getTracks().forEach((track) => track.stop());
    state.webcam.view.block.remove();
    state.webcam = null;
    $("webcam").textContent = "Start webcam";
    $("fps").textContent = "";
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    status("webcam: " + err.message);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  // A drawn square stays for the following frames.
  const view = new ResultView("webcam-result", () => {});
  $("results").prepend(view.block);
  state.webcam = { stream, view, running: true, done: [] };
  $("webcam").textContent = "Stop webcam";
  webcamLoop(state.webcam, video);
}

async function webcamLoop(cam, video) {
  while (cam.running) {
    // The inference runs on this thread and may finish without ever yielding: wait for the next
    // animation frame, so that the page stays responsive and draws what it showed.
    await new Promise((r) => requestAnimationFrame(r));
    if (!video.videoWidth) continue;
    try {
      const rgba = cam.view.draw(video, video.videoWidth, video.videoHeight);
      await classifyView(cam.view, rgba);
      const now = performance.now();
      cam.done.push(now);
      while (cam.done.length && now - cam.done[0] > 1000) cam.done.shift();
      $("fps").textContent = `${cam.done.length} fps`;
      $("fps").dataset.frames = String((Number($("fps").dataset.frames) || 0) + 1);
    } catch (err) {
      status("webcam: " + err.message);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function readConfig() {
  const response = await fetch("model.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`model.json: ${response.status} ${response.statusText}`);
  return response.json();
}

function describeModel() {
  const model = currentModel();
  if (!model) return;
  $("model-info").textContent = `${model.class_names.length} classes \u00b7 ${model.input_side} px`
    + ` \u00b7 ${state.config.runtime.package} ${state.config.runtime.version} (WebAssembly)`;
}

function listModels() {
  const select = $("model");
  select.replaceChildren(...state.config.models.map((model, id) => {
    const option = document.createElement("option");
    option.value = String(id);
    option.textContent = model.name + (model.error ? " (not in the browser)" : "");
    return option;
  }));
  select.disabled = state.config.models.length < 2;
  describeModel();
}

// A server without the runtime yet: it downloads it when asked, and the page waits for it.
async function waitForRuntime() {
  const runtime = state.config.runtime;
  $("runtime-missing").hidden = false;
  $("runtime-message").textContent = runtime.message || `${runtime.package} ${runtime.version} is not available.`;
  $("fetch-runtime").hidden = runtime.state === "fetching";
  status(runtime.state === "fetching" ? "Waiting for the server's download\u2026" : "");
  while (state.config.runtime.state === "fetching") {
    await new Promise((r) => setTimeout(r, 1000));
    state.config = await readConfig();
  }
  if (state.config.runtime.state === "ready") {
    $("runtime-missing").hidden = true;
    return true;
  }
  $("runtime-message").textContent = state.config.runtime.message || "";
  $("fetch-runtime").hidden = false;
  return false;
}

async function loadRuntime() {
  const ort = await import(new URL(state.config.runtime.module, document.baseURI).href);
  // One thread, in this page: no worker, no SharedArrayBuffer, so no cross-origin isolation.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  state.ort = ort;
}

async function ready() {
  const model = currentModel();
  const problem = checkModel(model);
  if (problem) {
    status(problem);
    $("file").disabled = $("webcam").disabled = true;
    return;
  }
  status(`Loading ${model.name}\u2026`);
  await session(model);
  $("file").disabled = $("webcam").disabled = false;
  status("");
  document.body.dataset.ready = "true";
}

async function start() {
  state.config = await readConfig();
  $("server-page").hidden = !state.config.served;
  listModels();
  if (state.config.runtime.state !== "ready" && !(await waitForRuntime())) return;
  await loadRuntime();
  await ready();
}

$("fetch-runtime").addEventListener("click", async () => {
  $("fetch-runtime").hidden = true;
  try {
    const response = await fetch("runtime", { method: "POST" });
    const runtime = await response.json();
    if (!response.ok) throw new Error(runtime.error || response.statusText);
    state.config.runtime = runtime;
    if (await waitForRuntime()) {
      await loadRuntime();
      await ready();
    }
  } catch (err) {
    status("onnxruntime-web: " + err.message);
    $("fetch-runtime").hidden = false;
  }
});
$("file").addEventListener("change", (event) => takePhotos(event.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (!$("file").disabled) takePhotos(event.dataTransfer.files);
});
$("model").addEventListener("change", async () => {
  describeModel();
  try {
    await ready();
    if (state.photos.length) showPhotos();
  } catch (err) {
    status("cannot load the model: " + err.message);
  }
});
$("webcam").addEventListener("click", toggleWebcam);
start().catch((err) => status("cannot start: " + err.message));
