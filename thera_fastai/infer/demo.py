"""A local demo page (Gradio, as the fast.ai course serves its models): upload or pick a face, see it enlarged with
where the fold models see an occlusion (Grad-CAM), each fold's probability, threshold, margin and vote, and the
ensemble's label with what decided it."""
import atexit, os, shutil, tempfile
from pathlib import Path

import numpy as np

from ..config import COMMAND_DEFAULTS as _C, CLASS_NAMES, SHORT_NAMES, Runtime
from ..data.cache import IMAGE_SHAPE
from .ensemble import load_fold_models, predict_folds, vote
from ..errors import TheraError
from ..progress import plural

__all__ = ['to_model_image', 'overlay', 'classify', 'explain', 'demo_app', 'serve']

SHOWN_PX = 320  # the face is shown at this size, its Grad-CAM map over it
EMPTY = "Upload a face or pick an example, then Classify."


def to_model_image(image):
    """Any uploaded picture as the (64, 64, 3) uint8 RGB image the models read: grey or RGBA made RGB, a non-square
    one cropped to its centred square, then resized (the exercise's portraits are square and 64 px)."""
    from PIL import Image
    img = np.asarray(image)
    if img.ndim == 2: img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 8:
        raise TheraError(f"expected an RGB picture of at least 8x8 pixels, got an array of shape {img.shape}")
    img = img[..., :3].astype(np.uint8)
    h, w = img.shape[:2]
    side = min(h, w)
    img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if img.shape != IMAGE_SHAPE: img = np.asarray(Image.fromarray(img).resize(IMAGE_SHAPE[1::-1], Image.BILINEAR))
    return img


def overlay(image, cam, size=SHOWN_PX, alpha=0.45):
    "The uint8 image enlarged to `size` pixels with the [0, 1] map `cam` over it in matplotlib's jet colours."
    from matplotlib import colormaps
    from PIL import Image
    big = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)).astype(np.float32)
    heat = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0
    coloured = colormaps['jet'](heat)[..., :3] * 255
    return ((1 - alpha) * big + alpha * coloured).clip(0, 255).astype(np.uint8)


def classify(models, image, tta, rule=_C['vote']):
    """(label text, per-fold rows) for one picture (`to_model_image` makes it 64x64): each fold's P(clean), threshold,
    margin (P(clean) - threshold: how far the fold is from changing its vote) and vote, then the ensemble's label by `rule`."""
    probs, votes = predict_folds(models, to_model_image(image)[None], tta)
    final = int(vote(probs, [m.threshold for m in models], rule)[0])
    rows = [[f"fold {m.fold}", round(float(p[0]), 4), round(m.threshold, 4), round(float(p[0]) - m.threshold, 4), SHORT_NAMES[int(v[0])]]
            for m, p, v in zip(models, probs, votes)]
    return f"{final}: {CLASS_NAMES[final]}. {explain(votes[:, 0], probs[:, 0], [m.threshold for m in models], rule)}", rows


def explain(votes, probs, thresholds, rule=_C['vote']):
    """What decided the label, in words: the mean margin over the folds' thresholds (the soft vote), or the majority
    of the folds' votes with a tie broken by the mean margin (the hard vote); and how close the folds were."""
    n, clean = len(votes), int(np.sum(votes))
    margins = np.asarray(probs) - np.asarray(thresholds)
    said = f"{clean} of {n} folds say clean"
    if rule == 'soft': how = f"the mean margin over the folds' thresholds is {margins.mean():+.3f} ({said})"
    elif 2 * clean == n: how = f"a tie ({said}), broken by the mean margin {margins.mean():+.3f}"
    else: how = f"{max(clean, n - clean)} of {n} folds say {SHORT_NAMES[int(2 * clean > n)]}"
    close = np.abs(margins).min()
    note = " The closest fold is within 0.01 of its threshold: a small change to the image could flip it." if close < 0.01 else ''
    return f"{rule.capitalize()} vote: {how}; each fold votes clean when its P(clean) is at least its own threshold.{note}"


def _ensemble_cam(models, img):
    "The mean over the fold models of their Grad-CAM maps for the evidence of an occlusion (class 0)."
    from ..analysis.saliency import grad_cam
    return np.mean([grad_cam(m.learn, img[None])[0] for m in models], axis=0)


def _examples(data, run_id, n):
    "Up to `n` example files from `data` copied into a temporary folder that is removed when the process exits."
    from ..data.source import open_images
    source = open_images(data)
    folder = Path(tempfile.mkdtemp(prefix=f"thera-demo-{run_id}-"))
    atexit.register(shutil.rmtree, folder, True)
    paths = []
    for name in source.names[:n]:
        (folder/name).write_bytes(source.read(name)); paths.append([str(folder/name)])
    return paths


def demo_app(run, data=None, device=Runtime.device, n_examples=8):
    "The Gradio app for run folder `run`; `data` (a dataset or folder of JPEGs) supplies example images to pick."
    import gradio as gr
    models, info = load_fold_models(run, device, partial=True)
    tta = info['config']['tta']
    examples = _examples(data, info['run_id'], n_examples) if data is not None else []

    def predict(image):
        if image is None: return EMPTY, [], None
        try:
            img = to_model_image(image)
            label, rows = classify(models, img, tta)   # (a 64x64 image passes through to_model_image unchanged)
            return label, rows, overlay(img, _ensemble_cam(models, img))
        except TheraError as e: return f"Cannot classify this picture: {e}", [], None

    with gr.Blocks(title='thera_fastai demo') as app:
        gr.Markdown(f"## Face occlusion: {info['config']['arch']} ensemble of {plural(len(models), 'fold model')}\n"
                    f"Run `{Path(run).name}`, TTA {tta}. Class 1 is a clean face, class 0 a face with a hat, cap, glasses or "
                    "other occlusion. Any picture is cropped to its centre square and resized to 64x64.")
        with gr.Row():
            image = gr.Image(type='numpy', label='portrait (any size)', height=SHOWN_PX)
            cam = gr.Image(type='numpy', label='where the folds see an occlusion (Grad-CAM, mean of the folds)', height=SHOWN_PX,
                           interactive=False)
        button = gr.Button('Classify', variant='primary')
        label = gr.Textbox(label='ensemble vote', value=EMPTY, lines=2)
        table = gr.Dataframe(headers=['model', 'P(clean)', 'threshold', 'margin', 'vote'], label='each fold', wrap=True)
        button.click(predict, inputs=image, outputs=[label, table, cam], api_name='predict')
        if examples: gr.Examples(examples, inputs=image)
    return app


def serve(run, data=None, host=_C['host'], port=_C['port'], device=Runtime.device):
    "Serves the demo on `host`:`port` until stopped (127.0.0.1: this machine only); a port in use is one `TheraError`."
    import signal, socket, sys
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop by `kill` still removes the examples' folder (atexit)
    with socket.socket() as probe:
        try: probe.bind((host, port))
        except OSError as e: raise TheraError(f"{host}:{port} cannot be served ({e.strerror}): pick another --port", param='port') from None
    demo_app(run, data, device).launch(server_name=host, server_port=port, share=False, show_error=False, quiet=True)
