"""The benchmark's table: its result dict in the human form `python -m leukviz bench` prints."""

from __future__ import annotations

from leukviz.benchmarks.settings import HEAD_EPOCHS


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"leukviz bench — {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, "
             f"device {res['device']}; {res['config']['image_size']} px, batch {res['config']['batch_size']}, "
             f"images of {res['data']['folder']} ({res['data']['n_images']})",
             *(f"note: {n}" for n in res["notes"]),
             "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in res["matmul_peak_gflops"].items()), "",
             f"{'backbone':<10} {'path':<22} {'img/s':>8} {'speedup':>8}  detail"]
    for name, r in res["backbones"].items():
        pf, lf = r["plain_full"], r["leukviz_full"]
        rows = [
            ("plain full", pf["images_per_s"], 1.0,
             f"fp32 NCHW, ImageFolder+PIL every epoch, num_workers={pf['num_workers']} (the faster of "
             + ", ".join(f"{w}: {v:.1f}" for w, v in pf["by_workers"].items()) + f" img/s); "
             f"{r['gflops_plain']:.0f} GFLOP/s = {r['plain_roofline_fraction']:.2f} of the fp32 peak"),
            ("leukviz full", lf["images_per_s"], r["speedup_full_vs_plain"],
             f"{lf['precision']} channels-last, cached uint8; {r['gflops_full']:.0f} GFLOP/s = "
             f"{r['roofline_fraction']:.2f} of the {lf['precision']} peak"),
            *([("plain last stage", r["plain_last"]["images_per_s"], 1.0, "fp32 NCHW, earlier layers frozen"),
               ("leukviz last stage", r["leukviz_last"]["images_per_s"], r["speedup_last_vs_plain"],
                f"{r['leukviz_last']['precision']} channels-last")] if "leukviz_last" in r else []),
            (f"plain head ({HEAD_EPOCHS} ep)", r["plain_head"]["images_per_s"], 1.0,
             f"{r['plain_head']['run_seconds']:.1f}s for {HEAD_EPOCHS} epochs"),
            (f"leukviz head ({HEAD_EPOCHS} ep)", None, r["speedup_head_vs_plain"],
             f"{r['leukviz_head']['run_seconds']:.2f}s: decode {r['leukviz_head']['cache_seconds']:.2f}s + features "
             f"{r['leukviz_head']['feature_seconds']:.2f}s + head {r['leukviz_head']['head_epochs_seconds']:.2f}s "
             f"({r['speedup_head_vs_plain_warm_cache']:.1f}x with the image cache already built, "
             f"{r['speedup_head_vs_plain_warm_features']:.0f}x with the features too)"),
        ]
        for label, ips, sp, detail in rows:
            lines.append(f"{name:<10} {label:<22} {'' if ips is None else f'{ips:8.1f}':>8} {sp:7.2f}x  {detail}")
    for name, rows in res.get("ablation", {}).items():
        base = res["backbones"][name]["plain_full"]["images_per_s"]
        lines += ["", f"{name} full fine-tuning, speed-ups added one at a time (plain loop: {base:.1f} img/s):"]
        lines += [f"  {r['step']:<40} {r['images_per_s']:8.1f} img/s {r['images_per_s'] / base:6.2f}x" for r in rows]
    if res["latency"]:
        lat = res["latency"]
        lines += ["", "prediction latency, one image file (decode + forward), warm: " + "; ".join(
            f"{k} p50 {v['p50_ms']:.0f} ms p95 {v['p95_ms']:.0f} ms" for k, v in lat.items())]
    if res["memory"]:
        mm = res["memory"]
        lines.append(f"peak resident memory, open_dataset + image_cache of {mm['files']} files at "
                     f"{mm['image_size']} px ({mm['note']}): {mm['peak_rss_mb']:.0f} MB (after indexing "
                     f"{mm['after_index_mb']:.0f} MB; cache file {mm['cache_mb']:.0f} MB; "
                     f"{mm['index_seconds'] + mm['cache_seconds']:.1f}s)")
    lines.append(f"total {res['seconds']:.0f}s")
    return "\n".join(lines)
