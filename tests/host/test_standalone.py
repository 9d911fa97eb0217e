"""The standalone host: save paths, prefix rules, Cancel and progress listeners (no ComfyUI)."""

from __future__ import annotations

import os
import time

import pytest

from comfyui_opensora.host.standalone import StandaloneHost


def test_save_path_counts_past_the_highest_number_and_fills_variables(standalone_host):
    output = standalone_host.output_directory()
    folder, filename, counter, subfolder = standalone_host.save_path("clips/run_%width%x%height%", 64, 32)
    assert (folder, filename, counter, subfolder) == (output.resolve() / "clips", "run_64x32", 1, "clips")
    for name in ("run_64x32_00002_.mp4", "run_64x32_00007_.png", "run_64x32_x.mp4", "other_00009_.mp4"):
        (folder / name).write_bytes(b"")
    assert standalone_host.save_path("clips/run_%width%x%height%", 64, 32)[2] == 8
    assert standalone_host.save_path("%year%/v")[3] == str(time.localtime().tm_year)


@pytest.mark.parametrize("prefix", ["", "  ", "/tmp/video", "\\video", "C:video", "../video", "a/../../video"])
def test_prefixes_leaving_the_output_folder_are_refused(standalone_host, prefix):
    with pytest.raises(ValueError, match="filename_prefix"):
        standalone_host.check_filename_prefix(prefix)
    with pytest.raises(ValueError, match="filename_prefix"):
        standalone_host.save_path(prefix)


def test_a_link_out_of_the_output_folder_is_refused(standalone_host, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", standalone_host.output_directory() / "out")
    with pytest.raises(ValueError, match="leads outside the output folder"):
        standalone_host.save_path("out/video")


def test_interrupt_raises_once_and_can_be_withdrawn(standalone_host):
    standalone_host.request_interrupt()
    with pytest.raises(standalone_host.Interrupted):
        standalone_host.check_interrupt()
    standalone_host.check_interrupt()  # the request is used up
    standalone_host.request_interrupt()
    standalone_host.request_interrupt(False)
    standalone_host.check_interrupt()


def test_progress_reaches_listeners_until_removed_and_checks_cancel(standalone_host):
    seen: list[tuple[int, int]] = []
    remove = standalone_host.add_progress_listener(lambda value, total: seen.append((value, total)))
    progress = standalone_host.Progress(3)
    progress.update()
    progress.update(5)  # capped at the total
    remove()
    progress.update()
    assert seen == [(1, 3), (3, 3)]
    standalone_host.request_interrupt()
    with pytest.raises(standalone_host.Interrupted):
        progress.update()


def test_an_unconfigured_host_says_what_to_set():
    host = StandaloneHost()
    with pytest.raises(RuntimeError, match="models_dir"):
        host.folder_paths("vae")
    with pytest.raises(RuntimeError, match="output_dir"):
        host.output_directory()
    host.configure(models_dir="models", device="cpu")
    assert host.folder_paths("vae")[0].as_posix() == "models/vae" and host.torch_device().type == "cpu"
