// Open-Sora nodes in the ComfyUI frontend:
//  - OpenSoraNoise shows the pixel size, latent shape and whether the frame count is decodable,
//    updated as autoencoder / resolution / aspect_ratio / width / height / num_frames change;
//  - inputs that do not apply to the chosen mode are hidden (width/height unless resolution is
//    "custom", the image-guidance options of OpenSoraSampler unless method is "i2v").
// No network access; nothing here changes what a workflow computes.
import { app } from "../../scripts/app.js";

// The size table and latent rules of samplers/geometry.py. Written by
// `python tests/test_web_extension.py --write`; tests/test_web_extension.py checks they agree.
// BEGIN GEOMETRY TABLE
export const GEOMETRY = {
  "autoencoders": {
    "dc_ae": {"causal": false, "latent_channels": 128, "patch_size": 1, "size_divisor": 32, "spatial_compression": 32, "temporal_compression": 4},
    "flux_ae": {"causal": true, "latent_channels": 16, "patch_size": 2, "size_divisor": 16, "spatial_compression": 8, "temporal_compression": 1},
    "hunyuan_vae": {"causal": true, "latent_channels": 16, "patch_size": 2, "size_divisor": 16, "spatial_compression": 8, "temporal_compression": 4}
  },
  "sizes": {
    "dc_ae": {
      "256px": {"1.85:1": [192, 320], "16:9": [192, 320], "1:1": [256, 256], "1:1.85": [320, 192], "1:2": [352, 160], "1:2.39": [384, 160], "2.39:1": [160, 384], "2:1": [160, 352], "2:3": [288, 224], "3:2": [224, 288], "3:4": [288, 224], "4:3": [224, 288], "5:8": [320, 192], "8:5": [192, 320], "9:16": [320, 192]},
      "768px": {"1.85:1": [576, 1024], "16:9": [576, 1024], "1:1": [768, 768], "1:1.85": [1024, 576], "1:2": [1056, 544], "1:2.39": [1184, 480], "2.39:1": [480, 1184], "2:1": [544, 1056], "2:3": [928, 608], "3:2": [608, 928], "3:4": [864, 672], "4:3": [672, 864], "5:8": [1024, 576], "8:5": [576, 1024], "9:16": [1024, 576]}
    },
    "flux_ae": {
      "256px": {"1.85:1": [192, 336], "16:9": [192, 336], "1:1": [256, 256], "1:1.85": [336, 192], "1:2": [352, 176], "1:2.39": [384, 160], "2.39:1": [160, 384], "2:1": [176, 352], "2:3": [304, 208], "3:2": [208, 304], "3:4": [288, 224], "4:3": [224, 288], "5:8": [336, 192], "8:5": [192, 336], "9:16": [336, 192]},
      "768px": {"1.85:1": [560, 1040], "16:9": [576, 1024], "1:1": [768, 768], "1:1.85": [1040, 560], "1:2": [1072, 544], "1:2.39": [1184, 496], "2.39:1": [496, 1184], "2:1": [544, 1072], "2:3": [928, 624], "3:2": [624, 928], "3:4": [880, 656], "4:3": [656, 880], "5:8": [992, 592], "8:5": [592, 992], "9:16": [1024, 576]}
    },
    "hunyuan_vae": {
      "256px": {"1.85:1": [192, 336], "16:9": [192, 336], "1:1": [256, 256], "1:1.85": [336, 192], "1:2": [352, 176], "1:2.39": [384, 160], "2.39:1": [160, 384], "2:1": [176, 352], "2:3": [304, 208], "3:2": [208, 304], "3:4": [288, 224], "4:3": [224, 288], "5:8": [336, 192], "8:5": [192, 336], "9:16": [336, 192]},
      "768px": {"1.85:1": [560, 1040], "16:9": [576, 1024], "1:1": [768, 768], "1:1.85": [1040, 560], "1:2": [1072, 544], "1:2.39": [1184, 496], "2.39:1": [496, 1184], "2:1": [544, 1072], "2:3": [928, 624], "3:2": [624, 928], "3:4": [880, 656], "4:3": [656, 880], "5:8": [992, 592], "8:5": [592, 992], "9:16": [1024, 576]}
    }
  }
};
// END GEOMETRY TABLE

export const CUSTOM = "custom";

// ---------------------------------------------------------------------------- geometry (mirror)

export function isValidNumFrames(numFrames, ae) {
  if (numFrames === 1) return true;
  if (numFrames < 1) return false;
  const t = ae.temporal_compression;
  return ae.causal ? (numFrames - 1) % t === 0 : numFrames % t === 0;
}

export function nearestValidNumFrames(numFrames, ae) {
  let below = Math.max(1, numFrames);
  while (!isValidNumFrames(below, ae)) below -= 1;
  let above = Math.max(1, numFrames);
  while (!isValidNumFrames(above, ae)) above += 1;
  return [below, above];
}

export function latentNumFrames(numFrames, ae) {
  if (numFrames === 1) return 1;
  const t = ae.temporal_compression;
  return ae.causal ? Math.floor((numFrames - 1) / t) + 1 : Math.floor(numFrames / t);
}

function frameRule(ae) {
  return ae.causal ? `${ae.temporal_compression}k+1` : `a multiple of ${ae.temporal_compression}`;
}

/** Size, latent shape and problems of the video an OpenSoraNoise node with these values makes. */
export function videoInfo(values) {
  const ae = GEOMETRY.autoencoders[values.autoencoder];
  if (!ae) return { ok: false, problems: [`unknown autoencoder '${values.autoencoder}'`] };
  let height = values.height;
  let width = values.width;
  if (values.resolution !== CUSTOM) {
    const size = (GEOMETRY.sizes[values.autoencoder]?.[values.resolution] || {})[values.aspect_ratio];
    if (!size) return { ok: false, problems: [`no preset ${values.resolution} ${values.aspect_ratio}`] };
    [height, width] = size;
  }
  const numFrames = values.num_frames;
  const problems = [];
  if (!isValidNumFrames(numFrames, ae)) {
    const [below, above] = nearestValidNumFrames(numFrames, ae);
    problems.push(`${numFrames} frames: needs ${frameRule(ae)} (${below} or ${above})`);
  }
  const d = ae.size_divisor;
  for (const [name, value] of [["width", width], ["height", height]]) {
    if (value < d) problems.push(`${name} ${value} < ${d}`);
    else if (value % d) problems.push(`${name} ${value}: not a multiple of ${d} (${value - (value % d)} or ${value - (value % d) + d})`);
  }
  const p = ae.patch_size;
  const latentHeight = p * Math.ceil(height / d);
  const latentWidth = p * Math.ceil(width / d);
  const latentFrames = latentNumFrames(Math.max(1, numFrames), ae);
  return {
    ok: problems.length === 0,
    height,
    width,
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
  const what = info.numFrames === 1 ? "1 frame (image)" : `${info.numFrames} frames`;
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

// ComfyUI can serve a pack's web folder twice (WEB_DIRECTORY and pyproject's [tool.comfy] web under
// another name), which runs this module twice: register once.
if (!(app.extensions || []).some((e) => e.name === extension.name)) app.registerExtension(extension);
