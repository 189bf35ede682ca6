"""``cocopie-tf demo --app sr|style|color``: one application end to end,
printed as it goes, with the quality and latency tables at the end."""

from __future__ import annotations

from cocopie_tf.apps import pipeline

QUALITY_KEYS = {
    "sr": (("psnr", "PSNR dB"), ("psnr_bicubic", "bicubic PSNR dB")),
    "style": (("content_loss", "content loss"), ("style_loss", "style loss")),
    "color": (("psnr", "PSNR dB"), ("psnr_grey", "grey PSNR dB")),
}


def format_quality(result: dict) -> str:
    app = result["app"]
    keys = QUALITY_KEYS[app]
    q = result["quality"]
    photos = [p for p in q["dense"] if p not in ("mean", "loss_network")]
    head = f"  {'photo':<10}" + "".join(f"{'dense ' + label:>22}{'pruned ' + label:>22}"
                                          for _, label in keys[:1])
    head += "".join(f"{label:>20}" for _, label in keys[1:])
    lines = [head]
    for p in photos + ["mean"]:
        d, pr = q["dense"][p], q["pruned"][p]
        row = f"  {p:<10}{d[keys[0][0]]:>22.3f}{pr[keys[0][0]]:>22.3f}"
        for k, _ in keys[1:]:
            if app == "style":  # both models have their own style loss
                row += f"{d[k]:>9.3f} / {pr[k]:<8.3f}"
            else:
                row += f"{d[k]:>20.3f}"
        lines.append(row)
    if app == "style":
        lines.append(f"  (style loss: dense / pruned; VGG-16 loss network with "
                     f"{q['dense']['loss_network']} weights)")
    return "\n".join(lines)


def format_latency(result: dict) -> str:
    lines = [f"  {'threads':>7}  {'dense, XNNPACK':>16}  {'pruned, XNNPACK':>16}  "
             f"{'pruned, cocopie':>16}  {'speed-up':>8}"]
    for t, row in result["latency_ms"].items():
        d, p, c = (row[k]["median"] for k in ("dense_xnnpack", "pruned_xnnpack", "pruned_cocopie"))
        lines.append(f"  {t:>7}  {d:>13.1f} ms  {p:>13.1f} ms  {c:>13.1f} ms  {d / c:>7.2f}x")
    return "\n".join(lines)


def main(app: str, preset: str, threads, runs: int, pictures) -> int:
    settings = pipeline.settings_for(app, preset)
    print(f"cocopie-tf demo --app {app}: {pipeline.APPS[app]}, preset {preset!r}")
    dense, pruned, record = pipeline.train(app, settings)
    try:
        result = pipeline.evaluate(app, dense, pruned, settings, threads=threads, runs=runs,
                                   out_dir=pictures)
    except AssertionError as e:
        print(f"error: {e}")
        return 1
    except OSError as e:
        print(f"error: {e}")
        return 2
    result["training"] = record
    side = settings.eval_size
    print(f"\nquality on the held-out photos at {side}x{side} output (outputs of the .tflite "
          f"models: dense on stock LiteRT, pruned with the cocopie delegate):")
    print(format_quality(result))
    print(f"\nlatency per {side}x{side} frame, {runs} alternating runs, medians:")
    print(format_latency(result))
    titles = pipeline.panel_titles(app)
    print(f"\npictures (left to right: {', '.join(titles)}):")
    for p in result["pictures"]:
        print(f"  {p}")
    return 0
