"""A local demo page (Gradio, as the fast.ai course serves its models): upload or pick a face, see each fold's
probability and vote, and the ensemble's label."""
import os
from pathlib import Path

import numpy as np

from .cache import IMAGE_SHAPE
from .ensemble import load_fold_models, predict_folds, vote
from .errors import TheraError
from .progress import plural

__all__ = ['classify', 'demo_app', 'serve']

CLASS_NAMES = {0: 'occluded (hat, cap, glasses...)', 1: 'clean face'}


def classify(models, image, tta):
    "(label name, per-fold table) for one (64, 64, 3) uint8 image: each fold's P(clean), threshold and vote, then the vote."
    img = np.asarray(image)
    if img.ndim == 2: img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[-1] == 4: img = img[..., :3]
    if img.shape != IMAGE_SHAPE: raise TheraError(f"the image is {img.shape[1]}x{img.shape[0]}; the models read 64x64 RGB portraits")
    probs, votes = predict_folds(models, img.astype(np.uint8)[None], tta)
    final = int(vote(votes, probs, [m.threshold for m in models])[0])
    rows = [[f"fold {m.fold}", round(float(p[0]), 4), round(m.threshold, 4), CLASS_NAMES[int(v[0])]] for m, p, v in zip(models, probs, votes)]
    return f"{final}: {CLASS_NAMES[final]} ({int(votes[:, 0].sum())} of {len(models)} folds say clean)", rows


def demo_app(run, data=None, device='auto', n_examples=8):
    "The Gradio app for run folder `run`; `data` (a dataset or folder of JPEGs) supplies example images to pick."
    import gradio as gr
    models, info = load_fold_models(run, device, partial=True)
    tta = info['config']['tta']
    examples = []
    if data is not None:
        from .source import open_images
        source = open_images(data)
        tmp = Path(os.environ.get('TMPDIR', '/tmp'))/f"thera-demo-{info['run_id']}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name in source.names[:n_examples]:
            (tmp/name).write_bytes(source.read(name)); examples.append([str(tmp/name)])

    def predict(image):
        if image is None: raise gr.Error("upload or pick an image first")
        try: return classify(models, image, tta)
        except TheraError as e: raise gr.Error(str(e)) from None

    with gr.Blocks(title='thera_fastai demo') as app:
        gr.Markdown(f"## Face occlusion: {info['config']['arch']} ensemble of {plural(len(models), 'fold model')}\n"
                    f"Run `{Path(run).name}`, TTA {tta}. Class 1 is a clean face, class 0 a face with a hat, cap, glasses or other occlusion.")
        with gr.Row():
            image = gr.Image(type='numpy', label='64x64 portrait', height=256)
            with gr.Column():
                label = gr.Textbox(label='ensemble vote')
                table = gr.Dataframe(headers=['model', 'P(clean)', 'threshold', 'vote'], label='each fold')
        button = gr.Button('Classify', variant='primary')
        button.click(predict, inputs=image, outputs=[label, table], api_name='predict')
        if examples: gr.Examples(examples, inputs=image)
    return app


def serve(run, data=None, host='127.0.0.1', port=7860, device='auto'):
    "Serves the demo on `host`:`port` until stopped (127.0.0.1: this machine only)."
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
    demo_app(run, data, device).launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
