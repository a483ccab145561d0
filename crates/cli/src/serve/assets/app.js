// The page of `cargo xtask serve`: photos or webcam frames go to POST /api/predict, and each
// face found comes back boxed, labelled and with a bar per class. Plain JavaScript, no build.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], photos: [], webcam: null };

function query() {
  const params = new URLSearchParams({ model: $("model").value || "0" });
  if ($("heatmap").checked) params.set("heatmap", "true");
  if ($("whole-image").checked) params.set("whole_image", "true");
  return params.toString();
}

async function predict(blob) {
  const response = await fetch("/api/predict?" + query(), { method: "POST", body: blob,
    headers: { "Content-Type": blob.type || "application/octet-stream" } });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }

// One result block: the image with boxes (and heat maps) and a card of bars per face.
function render(block, source, answer) {
  block.replaceChildren();
  const stage = document.createElement("div");
  stage.className = "stage";
  stage.appendChild(source);
  const cards = document.createElement("div");
  cards.className = "faces";
  answer.faces.forEach((face, index) => {
    const box = document.createElement("div");
    box.className = "face-box";
    box.style.left = (100 * face.box.x / answer.width) + "%";
    box.style.top = (100 * face.box.y / answer.height) + "%";
    box.style.width = (100 * face.box.width / answer.width) + "%";
    box.style.height = (100 * face.box.height / answer.height) + "%";
    if (face.heatmap) {
      const heat = document.createElement("img");
      heat.className = "heatmap";
      heat.alt = "Grad-CAM heat map of " + face.top;
      heat.src = face.heatmap;
      box.appendChild(heat);
    }
    const label = document.createElement("span");
    label.className = "face-label";
    label.textContent = `${index + 1}: ${face.top} ${percent(face.top_probability)}`;
    box.appendChild(label);
    stage.appendChild(box);

    const card = document.createElement("div");
    card.className = "face-card";
    const title = document.createElement("h2");
    title.innerHTML = `face ${index + 1}: <span class="top-class"></span>`;
    title.querySelector(".top-class").textContent = face.top;
    card.appendChild(title);
    for (const [name, p] of Object.entries(face.probabilities)) {
      const row = document.createElement("div");
      row.className = "class-bar" + (name === face.top ? " top" : "");
      row.dataset.class = name;
      row.innerHTML = '<span class="name"></span><div class="bar"><div></div></div><span class="percent"></span>';
      row.querySelector(".name").textContent = name;
      row.querySelector(".bar > div").style.width = percent(p);
      row.querySelector(".percent").textContent = percent(p);
      card.appendChild(row);
    }
    cards.appendChild(card);
  });
  if (answer.faces.length === 0) {
    const none = document.createElement("p");
    none.className = "no-face";
    none.textContent = "No face found. For an already cropped face, tick \u201cthe whole image is one face\u201d.";
    cards.appendChild(none);
  }
  block.append(stage, cards);
}

async function showPhotos() {
  const results = $("results");
  results.querySelectorAll(".result.photo-result").forEach((old) => old.remove());
  $("status").textContent = "";
  for (const file of state.photos) {
    const block = document.createElement("section");
    block.className = "result photo-result";
    results.appendChild(block);
    try {
      const answer = await predict(file);
      const img = document.createElement("img");
      img.className = "photo";
      img.alt = "uploaded photo";
      img.src = URL.createObjectURL(file);
      render(block, img, answer);
    } catch (err) {
      $("status").textContent = `${file.name}: ${err.message}`;
      block.remove();
    }
  }
}

function takePhotos(files) {
  state.photos = Array.from(files).filter((file) => /^image\/(png|jpeg)$/.test(file.type) || file.type === "");
  if (state.photos.length === 0) {
    $("status").textContent = "Only PNG and JPEG images can be read.";
    return;
  }
  showPhotos();
}

// The webcam: a frame is sent as soon as the previous answer came back; the frame rate shown is
// the number of answered frames in the last second.
async function toggleWebcam() {
  if (state.webcam) {
    state.webcam.running = false;
    state.webcam.stream.getTracks().forEach((track) => track.stop());
    state.webcam.block.remove();
    state.webcam = null;
    $("webcam").textContent = "Start webcam";
    $("fps").textContent = "";
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    $("status").textContent = "webcam: " + err.message;
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  const block = document.createElement("section");
  block.className = "result webcam-result";
  $("results").prepend(block);
  state.webcam = { stream, block, running: true, answered: [] };
  $("webcam").textContent = "Stop webcam";
  webcamLoop(state.webcam, video);
}

async function webcamLoop(cam, video) {
  const grab = document.createElement("canvas");
  while (cam.running) {
    if (!video.videoWidth) { await new Promise((r) => setTimeout(r, 50)); continue; }
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    grab.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((r) => grab.toBlob(r, "image/jpeg", 0.85));
    try {
      const answer = await predict(blob);
      if (!cam.running) break;
      const shown = document.createElement("canvas");
      shown.width = grab.width;
      shown.height = grab.height;
      shown.getContext("2d").drawImage(grab, 0, 0);
      render(cam.block, shown, answer);
      const now = performance.now();
      cam.answered.push(now);
      while (cam.answered.length && now - cam.answered[0] > 1000) cam.answered.shift();
      $("fps").textContent = `${cam.answered.length} fps`;
      $("fps").dataset.fps = String(cam.answered.length);
      $("fps").dataset.frames = String((Number($("fps").dataset.frames) || 0) + 1);
    } catch (err) {
      $("status").textContent = "webcam: " + err.message;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function loadModels() {
  const response = await fetch("/api/model");
  const info = await response.json();
  if (!response.ok) throw new Error(info.error);
  state.models = info.models;
  const select = $("model");
  select.replaceChildren(...info.models.map((model) => {
    const option = document.createElement("option");
    option.value = String(model.id);
    option.textContent = model.name;
    return option;
  }));
  select.disabled = info.models.length < 2;
  describeModel();
}

function describeModel() {
  const model = state.models[Number($("model").value) || 0];
  if (!model) return;
  const parts = [`${model.classes.length} classes`, `${model.input_side} px`];
  if (model.protocol) parts.push(`split by ${model.protocol.split}, fold ${model.protocol.fold} of ${model.protocol.folds}`);
  if (model.accuracy != null) parts.push(`test accuracy ${model.accuracy.toFixed(1)}%`);
  $("model-info").textContent = parts.join(" \u00b7 ");
}

$("file").addEventListener("change", (event) => takePhotos(event.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  takePhotos(event.dataTransfer.files);
});
for (const id of ["heatmap", "whole-image"]) $(id).addEventListener("change", () => state.photos.length && showPhotos());
$("model").addEventListener("change", () => { describeModel(); if (state.photos.length) showPhotos(); });
$("webcam").addEventListener("click", toggleWebcam);
loadModels().catch((err) => { $("status").textContent = "cannot read the model: " + err.message; });
