// Open-Sora nodes in the ComfyUI frontend:
//  - OpenSoraNoise shows the pixel size, latent shape and whether the frame count is decodable,
//    updated as autoencoder / resolution / aspect_ratio / width / height / num_frames change;
//  - inputs that do not apply to the chosen mode are hidden (width/height unless resolution is
//    "custom", the image-guidance options of OpenSoraSampler unless method is "i2v");
//  - the notes of the pack's example workflows are drawn at the font size they ask for, so that they can
//    be read at the zoom the workflow opens with (other notes are left alone).
// No network access; nothing here changes what a workflow computes.
import { app } from "../../scripts/app.js";

// The autoencoder rules of models/latent_space.py and the aspect ratios of samplers/geometry.py; sizes for
// any resolution name are computed below with the reference's formula. Written by
// `python tests/test_web_extension.py --write`; tests/test_web_extension.py checks they agree.
// BEGIN GEOMETRY TABLE
export const GEOMETRY = {
  "aspect_ratios": ["2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1"],
  "autoencoders": {
    "dc_ae": {"causal": false, "latent_channels": 128, "patch_size": 1, "size_divisor": 32, "spatial_compression": 32, "temporal_compression": 4},
    "flux_ae": {"causal": true, "latent_channels": 16, "patch_size": 2, "size_divisor": 16, "spatial_compression": 8, "temporal_compression": 1},
    "hunyuan_vae": {"causal": true, "latent_channels": 16, "patch_size": 2, "size_divisor": 16, "spatial_compression": 8, "temporal_compression": 4}
  }
};
// END GEOMETRY TABLE

export const CUSTOM = "custom";

// ---------------------------------------------------------------------------- geometry (mirror)

const RESOLUTION_NAME = /^([1-9][0-9]*)(px|p)$/;

/** Pixel count of a resolution name ("256px" = 256², "720p" = 720²·16/9), or null if it is not one. */
export function numPixels(resolution) {
  const match = RESOLUTION_NAME.exec(String(resolution).split("_")[0]);
  if (!match) return null;
  const side = Number(match[1]);
  return match[2] === "px" ? side * side : Math.trunc((side * side) / 9 * 16);
}

// Python's float floor division (a // b) for positive numbers, so sizes agree to the pixel.
function floorDiv(a, b) {
  const mod = a % b;
  const div = (a - mod) / b;
  let floor = Math.floor(div);
  if (div - floor > 0.5) floor += 1;
  return floor;
}

/** {"w:h": [height, width]} of the inference size table for a resolution name and size divisor. */
export function aspectRatioTable(resolution, divisor) {
  const total = numPixels(resolution);
  if (total === null) return null;
  const table = {};
  const transposed = {};
  for (const ratio of GEOMETRY.aspect_ratios) {
    const [w, h] = ratio.split(":").map(Number);
    const width = floorDiv(Math.sqrt(total * (w / h)), divisor) * divisor;
    if (width === 0) return null;
    const height = floorDiv(total / width, divisor) * divisor;
    table[ratio] = [height, width];
    transposed[ratio.split(":").reverse().join(":")] = [width, height];
  }
  return Object.assign(table, transposed);
}

/** Pixel [height, width] of a preset (rounded up to 16 as the reference does), or null. */
export function imageSize(resolution, aspectRatio, ae) {
  const size = aspectRatioTable(resolution, ae.size_divisor)?.[aspectRatio];
  return size ? size.map((v) => Math.ceil(v / 16) * 16) : null;
}

export function latentNumFrames(numFrames, ae) {
  return Math.floor((Math.max(1, numFrames) - 1) / ae.temporal_compression) + 1;
}

/** Frames the reference writes for a requested count (16 -> 13 for the causal VAE). */
export function outputNumFrames(numFrames, ae) {
  const latent = latentNumFrames(numFrames, ae);
  const t = ae.temporal_compression;
  const decoded = ae.causal ? (latent === 1 ? 1 : t * (latent - 1) + 1) : t * latent;
  return Math.min(numFrames, decoded);
}

/** Size, latent shape and problems of the video an OpenSoraNoise node with these values makes. */
export function videoInfo(values) {
  const ae = GEOMETRY.autoencoders[values.autoencoder];
  if (!ae) return { ok: false, problems: [`unknown autoencoder '${values.autoencoder}'`] };
  let height = values.height;
  let width = values.width;
  if (values.resolution !== CUSTOM) {
    const size = imageSize(values.resolution, values.aspect_ratio, ae);
    if (!size) return { ok: false, problems: [`no preset ${values.resolution} ${values.aspect_ratio}`] };
    [height, width] = size;
  }
  const requested = values.num_frames;
  const problems = [];
  if (!(requested >= 1)) problems.push(`${requested} frames: at least 1 is needed`);
  const numFrames = requested >= 1 ? outputNumFrames(requested, ae) : requested;
  const d = ae.size_divisor;
  for (const [name, value] of [["width", width], ["height", height]]) {
    if (value < d) problems.push(`${name} ${value} < ${d}`);
    else if (value % d) problems.push(`${name} ${value}: not a multiple of ${d} (${value - (value % d)} or ${value - (value % d) + d})`);
  }
  const p = ae.patch_size;
  const latentHeight = p * Math.ceil(height / d);
  const latentWidth = p * Math.ceil(width / d);
  const latentFrames = latentNumFrames(Math.max(1, requested), ae);
  return {
    ok: problems.length === 0,
    height,
    width,
    requested,
    numFrames,
    latent: [values.batch_size ?? 1, ae.latent_channels, latentFrames, latentHeight, latentWidth],
    tokens: latentFrames * (latentHeight / p) * (latentWidth / p),
    problems,
  };
}

/** The two lines shown on an OpenSoraNoise node. */
export function describeVideo(values) {
  const info = videoInfo(values);
  if (info.latent === undefined) return [`✗ ${info.problems.join("; ")}`, ""];
  let what = info.numFrames === 1 ? "1 frame (image)" : `${info.numFrames} frames`;
  if (info.numFrames !== info.requested) what = `${info.requested} -> ${info.numFrames} frames (as Open-Sora)`;
  const first = info.ok
    ? `✓ ${info.width}×${info.height} px · ${what}`
    : `✗ ${info.problems.join("; ")}`;
  const second = `latent [${info.latent.join(", ")}] · ${info.tokens.toLocaleString("en-US")} tokens/video`;
  return [first, second];
}

// ---------------------------------------------------------------------------- shown / hidden inputs

/** Per node type: widgets shown only while `when(values)` holds. */
export const VISIBILITY_RULES = {
  OpenSoraNoise: [
    { widgets: ["width", "height"], when: (v) => v.resolution === CUSTOM },
    { widgets: ["aspect_ratio"], when: (v) => v.resolution !== CUSTOM },
  ],
  OpenSoraSampler: [
    // The distilled (Flux) sampler has one guidance scale and no oscillation or image guidance.
    { widgets: ["guidance_img", "image_osci", "scale_temporal_osci", "text_osci"], when: (v) => v.method !== "distill" },
  ],
};

/** Names of the widgets of `nodeType` to hide for these widget values. */
export function hiddenWidgets(nodeType, values) {
  const hidden = [];
  for (const rule of VISIBILITY_RULES[nodeType] || []) {
    if (!rule.when(values)) hidden.push(...rule.widgets);
  }
  return hidden;
}

// ---------------------------------------------------------------------------- node behaviour

const INFO_WIDGET = "opensora_video_info";
const INFO_LINE_HEIGHT = 16;

function widgetValues(node) {
  const values = {};
  for (const w of node.widgets || []) values[w.name] = w.value;
  return values;
}

function widgetIsLinked(node, widget) {
  const slot = (node.inputs || []).find((input) => input.widget?.name === widget.name);
  return slot?.link != null;
}

function setWidgetHidden(widget, hide) {
  if (!!widget.hidden === hide) return false;
  if (hide) {
    widget.__opensoraComputeSize = Object.prototype.hasOwnProperty.call(widget, "computeSize")
      ? { own: widget.computeSize }
      : null;
    widget.computeSize = () => [0, -4]; // no room while hidden (the canvas lays out every widget)
  } else if (widget.__opensoraComputeSize) {
    widget.computeSize = widget.__opensoraComputeSize.own;
  } else {
    delete widget.computeSize;
  }
  widget.hidden = hide;
  return true;
}

/** Hide or show the node's mode-dependent widgets; resize the node when something changed. */
export function applyVisibility(node) {
  const hide = new Set(hiddenWidgets(node.comfyClass || node.type, widgetValues(node)));
  let changed = false;
  for (const widget of node.widgets || []) {
    if (!VISIBILITY_RULES[node.comfyClass || node.type]?.some((r) => r.widgets.includes(widget.name))) continue;
    changed = setWidgetHidden(widget, hide.has(widget.name) && !widgetIsLinked(node, widget)) || changed;
  }
  if (changed && node.computeSize && node.setSize) {
    const wanted = node.computeSize();
    node.setSize([Math.max(node.size?.[0] ?? 0, wanted[0]), wanted[1]]);
    node.setDirtyCanvas?.(true, true);
  }
  return changed;
}

function addInfoWidget(node) {
  if ((node.widgets || []).some((w) => w.name === INFO_WIDGET)) return;
  const info = {
    type: "opensora_info",
    name: INFO_WIDGET,
    value: "",
    serialize: false, // not part of the saved workflow ...
    options: { serialize: false }, // ... nor of the prompt sent to the server
    computeSize: (width) => [width ?? 0, 2 * INFO_LINE_HEIGHT + 6],
    draw(ctx, drawnNode, width, y) {
      const lines = describeVideo(widgetValues(drawnNode));
      const ok = lines[0].startsWith("✓");
      this.value = lines.join("\n");
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.textAlign = "left";
      ctx.fillStyle = ok ? "#8fd18f" : "#ff8a80";
      ctx.fillText(lines[0], 15, y + INFO_LINE_HEIGHT - 2, width - 30);
      ctx.fillStyle = "#aaaaaa";
      ctx.fillText(lines[1], 15, y + 2 * INFO_LINE_HEIGHT, width - 30);
      ctx.restore();
    },
  };
  node.addCustomWidget ? node.addCustomWidget(info) : (node.widgets ||= []).push(info);
}

function watchWidgets(node) {
  for (const widget of node.widgets || []) {
    if (widget.__opensoraWatched) continue;
    const callback = widget.callback;
    widget.callback = function (...args) {
      const result = callback?.apply(this, args);
      applyVisibility(node);
      node.setDirtyCanvas?.(true, false);
      return result;
    };
    widget.__opensoraWatched = true;
  }
}

/** Set up a freshly created Open-Sora node (exported for the tests). */
export function setUpNode(node) {
  const type = node.comfyClass || node.type;
  if (type === "OpenSoraNoise") addInfoWidget(node);
  if (VISIBILITY_RULES[type]) {
    watchWidgets(node);
    applyVisibility(node);
  }
}

export const extension = {
  name: "OpenSora.VideoInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!VISIBILITY_RULES[nodeData.name]) return;
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      applyVisibility(this); // values loaded from a workflow do not call widget callbacks
      return result;
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      applyVisibility(this); // a widget turned into a linked input stays visible
      return result;
    };
  },
  nodeCreated(node) {
    setUpNode(node);
  },
};

// ---------------------------------------------------------------------------- the pack's notes

/** A Note / Markdown Note property, set in the pack's example workflows: the font size in graph pixels.
 * The frontend draws every note at the Comfy.TextareaWidget.FontSize setting (10 px) times the canvas
 * zoom, which is 6 px on screen at the zoom a large workflow needs to fit the window. */
export const NOTE_FONT_PROPERTY = "opensora_note_font_px";
export const NOTE_TYPES = ["Note", "MarkdownNote"];

/** Draw a note that carries NOTE_FONT_PROPERTY at that size; returns whether it did. */
export function applyNoteFont(node) {
  const px = Number(node.properties?.[NOTE_FONT_PROPERTY]);
  if (!NOTE_TYPES.includes(node.type) || !(px > 0)) return false;
  // The note's text box and the Markdown view inside it take their size from this variable.
  const elements = (node.widgets || []).map((w) => w.element ?? w.inputEl).filter((e) => e?.style);
  for (const element of elements) element.style.setProperty("--comfy-textarea-font-size", `${px}px`);
  return elements.length > 0;
}

export const noteExtension = {
  name: "OpenSora.NoteFont",
  loadedGraphNode(node) {
    applyNoteFont(node); // the frontend creates notes without the nodeCreated hook
  },
};

// ComfyUI can serve a pack's web folder twice (WEB_DIRECTORY and pyproject's [tool.comfy] web under
// another name), which runs this module twice: register once.
for (const registered of [extension, noteExtension]) {
  if (!(app.extensions || []).some((e) => e.name === registered.name)) app.registerExtension(registered);
}
