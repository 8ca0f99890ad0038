"""The ``longseq streaming`` commands (StreamingT2V)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from longseq import hub
from longseq.cliutils import (
    App,
    check_folder,
    check_number,
    check_output_file,
    console,
    fail,
    folding_table,
    make_folder,
    write_text,
)

app = App(
    help="StreamingT2V: long, consistent text-to-video by autoregressive chunks.",
)


def _load_pipeline(
    model: str,
    enhancer: str | None,
    device: str | None,
    memory: str | bool | None = None,
    first_chunk: str | None = None,
):
    from longseq.streaming import StreamingT2VPipeline
    from longseq.utils import default_device

    try:
        return StreamingT2VPipeline.from_pretrained(
            model, enhancer, default_device(device), memory, first_chunk
        )
    except (hub.CheckpointError, ImportError, ValueError) as e:
        fail(str(e))


_METRICS = (  # (column, key, digits): lower is better for every one
    ("seam-jump ratio", "seam_jump_ratio", 2),
    ("object drift", "object_drift", 1),
    ("drift after re-appearance", "reappear_drift", 1),
    ("background drift", "background_drift", 1),
    ("palette error", "palette_error", 1),
    ("SCuts", "scuts", 0),
    ("MAWE", "mawe", 1),
)


def _video_metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """Videos down, metrics across (colours in levels, 0-255; lower is better)."""
    table = folding_table(title, ["video", *(c for c, _, _ in _METRICS)])
    for name, m in rows.items():
        cells = [f"{m[k]:.{d}f}" if k in m and m[k] == m[k] else "-" for _, k, d in _METRICS]
        table.add_row(name, *cells)
    return table


@app.command("generate")
def streaming_generate(
    prompt: str = typer.Argument(..., help="what the video shows"),
    frames: int = typer.Option(240, help="length of the video in frames"),
    out: Path = typer.Option(Path("streaming.mp4"), "-o", "--out", help=".mp4 or .gif"),
    model: str = typer.Option(
        "streaming-t2v",
        help="streaming-t2v (CAM + APM), streaming-cam, streaming-naive-apm, streaming-naive, "
        "a checkpoint directory, or a diffusers text-to-video folder (unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/; CAM/APM in streaming/ if trained)",
    ),
    memory: str = typer.Option(
        None,
        help="with a diffusers folder: the folder of trained CAM/APM or naive weights "
        "[FOLDER/streaming if present]; 'none': the base alone",
    ),
    enhance: bool = typer.Option(True, help="refine with the enhancer (randomized blending)"),
    enhancer: str = typer.Option(
        "streaming-enhancer",
        help="the shipped enhancer, or a diffusers folder for a diffusers model",
    ),
    blending: str = typer.Option(
        None, help="random | shared | independent: how the enhancer joins chunks [default: random]"
    ),
    apm: bool = typer.Option(True, help="use the anchor frame (long-term memory)"),
    hold_cond: bool = typer.Option(
        None,
        "--hold-cond/--free-cond",
        help="hold each chunk's conditioning frames at their noised originals while sampling, "
        "or let the model re-make them [default: held]",
    ),
    steps: int = typer.Option(None, min=1, help="denoising steps per chunk (default: the model's)"),
    guidance: float = typer.Option(
        None, help="guidance scale, joint over text and anchor (default: the model's)"
    ),
    anchor_guidance: float = typer.Option(
        None, help="a separate anchor guidance scale (default: joint guidance)"
    ),
    guidance_interval: str = typer.Option(
        None,
        help="LO,HI: guide only the steps in this fraction of the noise schedule (0 clean, "
        "1 pure noise), e.g. 0,0.6; scale 1 elsewhere [default: the model's: every step]",
    ),
    first_chunk: str = typer.Option(
        None,
        help="a checkpoint that makes the first chunk instead of the model's base, e.g. "
        "streaming-first (a base trained for it; the better of 2 samples by streaming-critic)",
    ),
    first_candidates: int = typer.Option(
        None,
        min=1,
        help="first chunks sampled, the one the scorer rates best kept [default: the "
        "first-chunk model's: 1, or 2 with --first-chunk streaming-first]",
    ),
    chunk_candidates: int = typer.Option(
        None,
        min=1,
        help="every later chunk sampled N times, the one the scorer rates best kept "
        "(N times slower) [default: 1]",
    ),
    first_scorer: Path = typer.Option(
        None,
        help="a CLIP folder (transformers CLIPModel + processor) that scores the "
        "candidates (first chunk, and later chunks with --chunk-candidates) by text-frame "
        "similarity, in place of the model's scorer",
    ),
    fps: float = typer.Option(8.0, help="frames per second of the written video"),
    scale: int = typer.Option(4, help="integer upscaling of the written frames"),
    seed: int = typer.Option(0),
    resume: Path = typer.Option(
        None,
        help="frames kept by an interrupted run (OUT.partial.npy): the video continues them",
    ),
    device: str = typer.Option(None),
) -> None:
    """Generate a long video from a prompt, chunk by chunk, and write it to OUT.

    Ctrl-C keeps the frames made so far (OUT.partial.npy, and OUT as far as it got);
    --resume OUT.partial.npy continues them."""
    from longseq.data.videoworld import all_captions, caption_of, parse_caption
    from longseq.media import VIDEO_SUFFIXES, check_video_output
    from longseq.streaming import BLENDINGS

    if frames < 1:
        fail(f"--frames must be >= 1, got {frames}")
    if blending is not None and not enhance:
        fail("--blending applies to the enhancer, which --no-enhance turns off")
    blending = blending or "random"
    if blending not in BLENDINGS:
        fail(f"--blending must be one of {', '.join(BLENDINGS)}, got {blending!r}")
    if scale < 1:
        fail(f"--scale must be >= 1, got {scale}")
    if not fps > 0 or fps == float("inf"):
        fail(f"--fps must be a positive number, got {fps}")
    check_number(guidance, "--guidance", 0)
    check_number(anchor_guidance, "--anchor-guidance", 0)
    interval = None
    if guidance_interval is not None:
        try:
            interval = tuple(float(v) for v in guidance_interval.split(","))
            if len(interval) != 2:
                raise ValueError
        except ValueError:
            fail(f"--guidance-interval takes LO,HI (two numbers), got {guidance_interval!r}")
        if not 0 <= interval[0] < interval[1] <= 1:
            fail(f"--guidance-interval needs 0 <= LO < HI <= 1, got {guidance_interval!r}")
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        fail(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {out.name!r}")
    if out.is_dir():
        fail(f"--out {out} is a folder; give a file name")
    check_folder(out.parent, "--out")
    try:
        check_video_output(out, fps)
    except (ValueError, ImportError) as e:
        fail(str(e))
    if first_scorer is not None:
        if first_candidates == 1 and (chunk_candidates or 1) == 1:
            fail(
                "--first-scorer chooses among candidates: give --first-candidates or "
                "--chunk-candidates 2 or more"
            )
        from longseq.streaming.critic import check_clip_folder

        try:
            check_clip_folder(first_scorer)
        except FileNotFoundError as e:
            fail(f"--first-scorer: {e}")
    init = _read_resume(resume, frames)
    mem = False if memory is not None and memory.lower() == "none" else memory
    pipe = _load_pipeline(model, enhancer if enhance else None, device, mem, first_chunk)
    if first_scorer is not None:
        from longseq.streaming import ClipScorer

        ks = (
            first_candidates or pipe.defaults.get("first_chunk_candidates", 1),
            chunk_candidates or pipe.defaults.get("chunk_candidates", 1),
        )
        if max(ks) < 2:
            fail(
                f"--first-scorer chooses among candidates, and {model} samples one: "
                "give --first-candidates or --chunk-candidates 2 or more"
            )
        try:
            where = next(pipe.unet.parameters()).device
            pipe.first_chunk_scorer = ClipScorer.from_pretrained(first_scorer, where)
        except (OSError, ValueError) as e:
            fail(f"--first-scorer {first_scorer}: {str(e).splitlines()[0]}")
    if (chunk_candidates or 1) > 1 and pipe.first_chunk_scorer is None:
        fail(
            f"--chunk-candidates chooses among chunks by a scorer, and {model} has none: give "
            "--first-chunk streaming-first (its critic) or --first-scorer CLIP_FOLDER"
        )
    check_output_file(out, "--out", VIDEO_SUFFIXES, create_folder=True)
    if hub.registry().get(model) and not parse_caption(prompt):
        console.print(
            "[yellow]note:[/] the shipped model knows the video world's captions (a shape, a "
            f"motion, a speed), e.g. '{caption_of(all_captions()[0])}'; this prompt names "
            "none of their words"
        )
    if enhance and pipe.enhancer is None:
        console.print(
            f"[yellow]note:[/] {model} comes with no enhancer (give --enhancer <diffusers "
            "folder>); the video is written as generated",
            soft_wrap=True,
        )
        enhance = False
    _announce(pipe, frames, init, enhance)
    made = []  # the chunks made so far, kept if the run is interrupted
    try:
        for chunk in pipe.stream(
            prompt,
            frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            anchor_guidance_scale=anchor_guidance,
            use_anchor=apm,
            seed=seed,
            init_frames=init,
            hold_cond=hold_cond,
            guidance_interval=interval,
            first_chunk_candidates=first_candidates,
            chunk_candidates=chunk_candidates,
        ):
            made.append(chunk)
        video = np.concatenate(made)
        if enhance:
            video = pipe.enhance(video, prompt, blending=blending, seed=seed).frames
    except ValueError as e:
        fail(str(e))
    except KeyboardInterrupt:
        _keep_interrupted(out, made, frames, fps, scale)
    _write_video_or_keep_frames(out, video, fps, scale)
    h, w = video.shape[1:3]
    console.print(f"{len(video)} frames of {w}x{h} written to {out}")


def _partial_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.partial.npy")


def _read_resume(resume: Path | None, frames: int):
    """The frames of an interrupted run, checked before the models load."""
    import numpy as np

    if resume is None:
        return None
    try:
        init = np.load(resume)
    except (OSError, ValueError) as e:
        fail(f"--resume: cannot read {resume} ({e})")
    if init.ndim != 4 or init.shape[-1] != 3 or init.dtype != np.uint8 or len(init) == 0:
        fail(f"--resume: {resume} does not hold (T, H, W, 3) uint8 frames")
    if len(init) > frames:
        fail(f"--resume: {resume} holds {len(init)} frames, more than --frames {frames}")
    return init


def _announce(pipe, frames: int, init, enhance: bool) -> None:
    """What the run will make, with the memory its frames take (a long video is held in
    memory until it is written)."""
    f, fc = pipe.chunk_frames, pipe.cond_frames
    have = 0 if init is None else len(init)
    first = f if init is None else 0
    chunks = (1 if init is None else 0) + max(0, -(-(frames - max(have, first)) // (f - fc)))
    size = pipe._pixel_size(pipe.enhancer if enhance else pipe.unet)
    mem = frames * size * size * 3 / 1e9
    shown = f"{mem:.1f} GB" if mem >= 0.1 else f"{mem * 1e3:.1f} MB"
    resumed = f", continuing {have} kept frames" if have else ""
    console.print(
        f"{frames:,} frames in {chunks:,} chunks of {f - fc} new frames{resumed}; "
        f"{shown} of {size}x{size} frames in memory",
        soft_wrap=True,
    )
    if mem > 2:
        console.print(
            "[yellow]note:[/] the frames are held in memory until the video is written; "
            "Ctrl-C keeps those made so far",
            soft_wrap=True,
        )


def _keep_interrupted(out: Path, made: list, frames: int, fps: float, scale: int):
    """Ctrl-C: keep the frames made so far (.partial.npy to resume from, and the video as
    far as it got), then exit with status 130."""
    import numpy as np

    if not made:
        console.print("interrupted before the first chunk was made; nothing to keep")
        raise typer.Exit(130)
    video = np.concatenate(made)
    keep = _partial_path(out)
    np.save(keep, video)
    try:
        from longseq import media

        media.write_video(out, video, fps=fps, scale=scale)
        wrote = f" and {out} (not enhanced)"
    except (OSError, ValueError, ImportError, RuntimeError):
        wrote = ""
    console.print(
        f"interrupted: {len(video)} of {frames} frames kept in {keep}{wrote}; add "
        f"--resume {keep} to the same command to continue them",
        soft_wrap=True,
    )
    raise typer.Exit(130)


def _write_video_or_keep_frames(out: Path, frames, fps: float, scale: int) -> None:
    """Write the video; if that fails, keep the frames (a .npy beside OUT, or in the
    current folder) so that the generation is not lost, and fail naming both."""
    import numpy as np

    from longseq import media

    try:
        media.write_video(out, frames, fps=fps, scale=scale)
        return
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        error = str(e)
    for keep in (out.with_suffix(".npy"), Path.cwd() / f"{out.stem}.npy"):
        try:
            np.save(keep, frames)
            break
        except OSError:
            continue
    else:
        fail(f"cannot write {out} ({error}), nor keep the frames as .npy")
    fail(
        f"cannot write {out} ({error}); the {len(frames)} generated frames are kept in "
        f"{keep} (numpy.load it, then longseq.media.write_video)"
    )


@app.command("demo")
def streaming_demo(
    frames: int = typer.Option(128, help="length of the video in frames"),
    out: Path = typer.Option(Path("streaming-demo"), help="output folder"),
    seed: int = typer.Option(0),
    device: str = typer.Option(None),
) -> None:
    """Continue a held-out prompt with the shipped StreamingT2V models: the base chunks,
    the enhanced video, a labelled frame strip beside the world's own clip, and the
    metrics of all three, written to OUT."""
    from longseq.data.videoworld import clip_for_caption
    from longseq.media import frame_strip, labelled_rows, resize_video, write_image, write_video
    from longseq.streaming.evaluate import gate_prompts, video_metrics

    if frames < 2:
        fail(f"--frames must be >= 2, got {frames}")
    check_folder(out, "--out")
    pipe = _load_pipeline("streaming-t2v", "streaming-enhancer", device)
    make_folder(out, "--out")
    caption, _ = gate_prompts(seed + 1, "test")[seed]
    console.print(f"prompt (a caption never seen in training): [bold]{caption}[/]")
    base = pipe(caption, frames, seed=seed)
    enhanced = pipe.enhance(base.frames, caption, seed=seed)
    real = clip_for_caption(caption, seed=seed).render(frames, 32)
    write_video(out / "base.gif", base.frames, scale=8)
    write_video(out / "enhanced.mp4", enhanced.frames, scale=4)
    write_video(out / "enhanced.gif", enhanced.frames, scale=4)
    rows = [
        (f"world clip (real)\n{caption}", frame_strip(real, 8, scale=3)),
        ("StreamingT2V\nbase, 16 px", frame_strip(resize_video(base.frames, (32, 32)), 8, scale=3)),
        ("StreamingT2V\nenhanced, 32 px", frame_strip(enhanced.frames, 8, scale=3)),
    ]
    write_image(out / "strip.png", labelled_rows(rows))
    metrics = {
        "world clip (32 px)": video_metrics(real, seams=base.seams),
        "base chunks (16 px)": video_metrics(base.frames, seams=base.seams),
        "enhanced (32 px)": video_metrics(enhanced.frames, seams=base.seams),
    }
    console.print(_video_metrics_table("metrics (lower is better; colours in levels)", metrics))
    write_text(out / "metrics.json", json.dumps({"prompt": caption, **metrics}, indent=2), "--out")
    console.print(f"videos, strip.png and metrics.json in {out}")
