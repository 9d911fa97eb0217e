"""web/opensora.js: its geometry table and rules agree with models/latent_space.py and samplers/geometry.py;
its node behaviour, run in Node.js against a stand-in for ComfyUI's app module.

``python3 tools/web_geometry_table.py`` regenerates the table block in the JS file.
"""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
TABLE_TOOL = runpy.run_path(str(PACK_ROOT / "tools" / "web_geometry_table.py"))
SCRIPT, expected_table, read_table = TABLE_TOOL["SCRIPT"], TABLE_TOOL["expected_table"], TABLE_TOOL["read_table"]
_geometry = TABLE_TOOL["_geometry"]


# ---------------------------------------------------------------------------------------- static


def test_js_table_matches_geometry():
    assert read_table(SCRIPT.read_text(encoding="utf-8")) == expected_table(), (
        "web/opensora.js is out of date: run `python3 tools/web_geometry_table.py`"
    )


def test_js_imports_only_the_app_and_makes_no_network_calls():
    source = SCRIPT.read_text(encoding="utf-8")
    imports = re.findall(r"^\s*import\b.*$", source, flags=re.M)
    assert imports == ['import { app } from "../../scripts/app.js";']
    for word in ("fetch(", "XMLHttpRequest", "WebSocket", "api.js", "http://", "https://"):
        assert word not in source


def test_pack_serves_the_web_directory():
    import comfyui_opensora

    assert (PACK_ROOT / comfyui_opensora.WEB_DIRECTORY / "opensora.js").is_file()


# ------------------------------------------------------------------------------------- in Node.js

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (needed to run web/opensora.js)")

DRIVER = r"""
globalThis.registered = [];
const mod = await import("./extensions/pack/opensora.js");
const cases = JSON.parse(process.argv[2]);
const info = cases.map((values) => ({ info: mod.videoInfo(values), text: mod.describeVideo(values) }));

// A stand-in for a canvas node: widgets with callbacks, size computation, custom widgets.
function fakeNode(comfyClass, values) {
  const node = {
    comfyClass, size: [300, 0], inputs: [], sizes: [],
    widgets: Object.entries(values).map(([name, value]) => ({ name, value, callback: null })),
    addCustomWidget(w) { this.widgets.push(w); return w; },
    computeSize() {
      const h = this.widgets.reduce((t, w) => t + (w.computeSize ? w.computeSize(300)[1] + 4 : 24), 30);
      return [200, h];
    },
    setSize(s) { this.size = s; this.sizes.push(s[1]); },
  };
  return node;
}
const set = (node, name, value) => { const w = node.widgets.find((x) => x.name === name); w.value = value; w.callback?.(value); };
const hiddenNames = (node) => node.widgets.filter((w) => w.hidden).map((w) => w.name);

const noise = fakeNode("OpenSoraNoise", { autoencoder: "hunyuan_vae", resolution: "256px", aspect_ratio: "16:9",
  width: 336, height: 192, num_frames: 129, batch_size: 1, seed: 42, noise_device: "cpu" });
const ext = globalThis.registered[0];
ext.nodeCreated(noise);
const events = { created: hiddenNames(noise), heightPreset: noise.size[1] };
set(noise, "resolution", "custom");
events.custom = hiddenNames(noise);
events.heightCustom = noise.size[1];
noise.inputs.push({ name: "width", widget: { name: "width" }, link: 7 });
set(noise, "resolution", "768px");
events.linkedWidthStays = hiddenNames(noise);
const infoWidget = noise.widgets.find((w) => w.name === "opensora_video_info");
const ctx = { save() {}, restore() {}, fillText(t) { (this.texts ||= []).push(t); } };
infoWidget.draw(ctx, noise, 300, 100);
events.drawn = ctx.texts;
events.infoSerialize = [infoWidget.serialize, infoWidget.options.serialize];

const sampler = fakeNode("OpenSoraSampler", { method: "i2v", steps: 50, guidance: 7.5, guidance_img: 3.0,
  text_osci: true, image_osci: true, scale_temporal_osci: true, shift: true });
ext.nodeCreated(sampler);
events.samplerI2v = hiddenNames(sampler);
set(sampler, "method", "distill");
events.samplerDistill = hiddenNames(sampler);
set(sampler, "method", "i2v");
events.samplerBack = hiddenNames(sampler);
const bare = fakeNode("OpenSoraSampler", { steps: 50 });  // missing widgets must not break anything
ext.nodeCreated(bare);
events.bare = hiddenNames(bare);
events.extensionName = ext.name;

// Notes: only a Note / Markdown Note carrying the pack's property gets its font size.
const noteFont = globalThis.registered.find((e) => e.name === "OpenSora.NoteFont");
function fakeNote(type, properties) {
  const style = { vars: {}, setProperty(name, value) { this.vars[name] = value; } };
  return { type, properties, widgets: [{ name: "text", element: { style } }], style };
}
const notes = [fakeNote("MarkdownNote", { [mod.NOTE_FONT_PROPERTY]: 19 }), fakeNote("MarkdownNote", { text: "" }),
  fakeNote("Note", { [mod.NOTE_FONT_PROPERTY]: 14 }), fakeNote("OtherPackNote", { [mod.NOTE_FONT_PROPERTY]: 19 })];
for (const note of notes) noteFont.loadedGraphNode(note);
events.noteFonts = notes.map((n) => n.style.vars["--comfy-textarea-font-size"] ?? null);
events.noteProperty = mod.NOTE_FONT_PROPERTY;
console.log(JSON.stringify({ info, events }));
"""

APP_STUB = "export const app = { registerExtension(e) { globalThis.registered.push(e); } };\n"


def run_in_node(tmp_path: Path, cases: list[dict]) -> dict:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP_STUB)
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "extensions" / "pack" / "opensora.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "driver.mjs").write_text(DRIVER)
    result = subprocess.run(
        [NODE, "driver.mjs", json.dumps(cases)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# Menu names plus names no menu offers: the display must follow the reference's formula for any name.
EXTRA_RESOLUTIONS = ("100px", "200p", "333p", "540p", "1000px", "1234p", "2160p", "4096px")


def _cases() -> list[dict]:
    latent_space, geometry = _geometry()
    cases = []
    for autoencoder in latent_space.AUTOENCODERS:
        for resolution in (*geometry.RESOLUTIONS, *EXTRA_RESOLUTIONS):
            for ratio in geometry.all_aspect_ratios():
                cases.append(dict(autoencoder=autoencoder, resolution=resolution, aspect_ratio=ratio,
                                  width=0, height=0, num_frames=129 if autoencoder == "hunyuan_vae" else 128, batch_size=2))
        for frames in (1, 2, 4, 5, 13, 16, 33, 64, 127, 128, 129, 130):
            cases.append(dict(autoencoder=autoencoder, resolution="256px", aspect_ratio="9:16",
                              width=0, height=0, num_frames=frames, batch_size=1))
        for height, width in ((192, 336), (200, 336), (8, 64), (96, 96), (576, 1024), (480, 848)):
            cases.append(dict(autoencoder=autoencoder, resolution="custom", aspect_ratio="16:9",
                              width=width, height=height, num_frames=33, batch_size=1))
    return cases


def _reference_written_frames(num_frames: int, causal: bool, t: int = 4) -> int:
    """Frames the reference writes, from its own steps: T = (n-1)//t+1 latents (t = 4 for both video
    autoencoders, 1 for the per-frame Flux AE), decode, keep n."""
    latent = (num_frames - 1) // t + 1
    decoded = (t * (latent - 1) + 1 if latent > 1 else 1) if causal else t * latent
    return min(num_frames, decoded)


@needs_node
def test_js_video_info_agrees_with_geometry(tmp_path):
    latent_space, geometry = _geometry()
    cases = _cases()
    results = run_in_node(tmp_path, cases)["info"]
    for values, result in zip(cases, results):
        kind = latent_space.autoencoder_kind(values["autoencoder"])
        if values["resolution"] == "custom":
            height, width = values["height"], values["width"]
        else:
            height, width = geometry.image_size(values["resolution"], values["aspect_ratio"], kind)
        written = _reference_written_frames(values["num_frames"], kind.causal, kind.temporal_compression)
        video = geometry.VideoGeometry(height, width, written, kind.name)
        try:
            video.validate()
            valid = True
        except ValueError:
            valid = False
        info = result["info"]
        assert (info["height"], info["width"]) == (height, width), values
        assert info["ok"] == valid, (values, info["problems"])
        assert info["latent"] == list(video.latent_shape(values["batch_size"])), values
        assert info["tokens"] == video.latent_frames * video.tokens_per_frame, values
        assert info["numFrames"] == written, values
        assert not any("frames" in p for p in info["problems"]), values  # every count >= 1 is accepted
        if written != values["num_frames"]:
            assert f"{values['num_frames']} -> {written} frames (as Open-Sora)" in result["text"][0], values
        else:
            assert "->" not in result["text"][0], values
        assert result["text"][0].startswith("✓" if valid else "✗")


@needs_node
def test_js_shows_720p_16_to_13_frames(tmp_path):
    values = dict(autoencoder="hunyuan_vae", resolution="720p", aspect_ratio="16:9", width=0, height=0,
                  num_frames=16, batch_size=1)
    (result,) = run_in_node(tmp_path, [values])["info"]
    assert result["text"][0] == "✓ 1280×720 px · 16 -> 13 frames (as Open-Sora)"
    assert result["info"]["latent"] == [1, 16, 4, 90, 160]


@needs_node
def test_js_shows_info_and_hides_mode_dependent_inputs(tmp_path):
    events = run_in_node(tmp_path, [])["events"]
    assert events["extensionName"] == "OpenSora.VideoInfo"
    assert events["created"] == ["width", "height"]
    assert events["custom"] == ["aspect_ratio"]
    assert events["heightCustom"] == events["heightPreset"] + 24  # one more widget row shown: the node grew
    assert events["linkedWidthStays"] == ["height"]  # a linked widget input is never hidden
    assert events["drawn"] == ["✓ 1024×576 px · 129 frames", "latent [1, 16, 33, 72, 128] · 76,032 tokens/video"]
    assert events["infoSerialize"] == [False, False]
    assert events["samplerI2v"] == []
    assert events["samplerDistill"] == ["guidance_img", "text_osci", "image_osci", "scale_temporal_osci"]
    assert events["samplerBack"] == []
    assert events["bare"] == []


@needs_node
def test_js_sets_the_font_of_the_pack_notes_only(tmp_path):
    """A note of the example workflows is drawn at the size its property asks for; notes without it, and other
    node types with a property of that name, keep the frontend's size."""
    events = run_in_node(tmp_path, [])["events"]
    assert events["noteFonts"] == ["19px", None, "14px", None]
    for path in sorted((PACK_ROOT / "example_workflows").glob("*.json")):
        notes = [n for n in json.loads(path.read_text(encoding="utf-8"))["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert notes and all(events["noteProperty"] in n["properties"] for n in notes), path.name
