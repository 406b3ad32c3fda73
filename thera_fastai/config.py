"""What a fit computes (`FitConfig`, the run's identity) and how it runs (`Runtime`); every default is declared here."""
import difflib, os, platform
from dataclasses import asdict, dataclass, fields

from .errors import TheraError

__all__ = ['IMAGE_SHAPE', 'ARCH_NAMES', 'AIRBENCH_HEADS', 'AUTO_WIDTHS', 'WIDTHS_LADDER', 'AUTO_MIN_EPOCHS', 'TTA_SEED', 'N_BOOT', 'CHANCE_AUC', 'COMMAND_DEFAULTS', 'arch_stems', 'check_arch', 'FitConfig', 'Runtime', 'RECIPES', 'AIRBENCH', 'METHODS', 'PRECISIONS', 'SCHEDULES', 'BALANCES', 'DEVICES', 'PSEUDO_TARGETS', 'native_bf16', 'cpu_model', 'library_versions', 'package_commit', 'command_line']

# Each arch's recipe ('timm': any timm model name); where each value comes from, with the figures that chose it:
# docs/design.md, *Recipes*.
RECIPES = {'simple': dict(lr=3e-3, bs=128, epochs=13, label_smoothing=0.0),
           'resnet18': dict(lr=2e-3, bs=128, epochs=4, label_smoothing=0.0, stem='nopool'),
           'airbench': dict(lr=3e-3, bs=128, epochs=3, label_smoothing=0.2),
           'timm': dict(lr=2e-3, bs=128, epochs=4, label_smoothing=0.0, stem='x2')}
# airbench94's training method (Keller Jordan's CIFAR-10 speed run) in its decoupled form: lr and wd per 1024
# examples, independent of the batch size and the momentum. `whiten_bias` is the share of the steps the whitening
# layer's bias trains (airbench: 3 of 9.9 epochs); the lr warms up from `lr_start` over `warmup` of the steps, then
# falls linearly to `lr_end`; `lookahead_every` steps the weights are pulled to their average. `muon` updates the conv
# filters with airbench94_muon's Muon (orthogonalized Nesterov momentum at `muon_lr` per step, no decay, the same
# schedule), the other parameters with the SGD above. Each piece a switch.
AIRBENCH = dict(lr=11.5, momentum=0.85, wd=0.0153, bias_scaler=64.0, warmup=0.23, lr_start=0.2, lr_end=0.0,
                whiten=True, whiten_bias=0.3, whiten_eps=5e-4, whiten_images=5000, bn_momentum=0.6, bn_weight=False,
                dirac=True, lookahead=True, lookahead_every=5, alt_flip=True, muon=False, muon_lr=0.24, muon_momentum=0.6)
# `widths='auto'` (the default; it sizes the net of a budgeted airbench fit): the widest of these whose budget holds
# AUTO_MIN_EPOCHS on the machine that starts the run, else the narrowest. Measured nets that trained fewer than 3 epochs
# lost to a narrower net that trained more (the default at 0.3-2.2, 48/192/192 at 2.3-2.7), or were level with it where
# both were short (1.65 against 2.4); from 4.5 epochs on none lost (3 to 4.5 unmeasured): docs/results.md, *The net sized
# to the budget* and *32/128/128 against 48/192/192 at 10 minutes*.
AUTO_WIDTHS = 'auto'
WIDTHS_LADDER = ((64, 256, 256), (48, 192, 192), (32, 128, 128))
AUTO_MIN_EPOCHS = 3.0
AIRBENCH_HYP = {k: v for k, v in AIRBENCH.items() if k not in ('lr', 'wd')}  # lr and wd are FitConfig's own fields
METHODS = ('adam', 'airbench')
METHOD_DEFAULTS = {'adam': dict(wd=0.01), 'airbench': dict(lr=AIRBENCH['lr'], wd=AIRBENCH['wd'], bs=256)}
IMAGE_SHAPE = (64, 64, 3)  # (height, width, channels) of every image of the exercise
CLASS_NAMES = {0: 'occluded (hat, cap, glasses or other occlusion)', 1: 'clean face'}  # label 0 and 1, as the exercise defines them
SHORT_NAMES = {0: 'occluded', 1: 'clean'}
ARCH_NAMES = ('simple', 'resnet18', 'airbench')  # the package's own nets; any timm name is an arch too
RESNET_STEMS = ('default', 'nopool', 'conv3')
AIRBENCH_HEADS = ('max', 'concat', 'grid')  # the airbench net's pooling of its last map (models.pool_head); max is airbench's
TIMM_STEMS = {'default': 0, 'x2': 1, 'x4': 2}  # stem name: how many of the first stride-2 steps become stride 1
TTA_SEED = 0  # seed of the TTA augmentation: the same seed gives the same predictions
N_BOOT = 1000  # resamples of thera-compare's paired bootstrap interval
CHANCE_AUC = 0.6  # below this out-of-fold AUC a run has not learned: its HTER, errors in common and audit are noise
# The commands' defaults besides FitConfig's and Runtime's, declared once: cli.py, api.py and the modules read them here.
COMMAND_DEFAULTS = dict(
    labels='label_val.txt',  # thera-predict's label file
    explore_out='explore.png', explore_n=8, seed=0,  # thera-explore's grid: images per class, the sample's seed
    compare_n=32,  # thera-compare: rows per label in the grids of errors every run makes
    audit_n=16, audit_device='auto',  # thera-audit: suspects per given label in the grids; where the saliency maps run
    export_out='export',  # thera-export's folder
    # thera-predict's and thera-export's rule (infer/onnx_predict.VOTE_RULES): soft, the mean probability at the mean of
    # the folds' thresholds, scored better than the majority on rows no fold saw (docs/results.md, *The fold vote measured*)
    vote='soft',
    sweep_out='runs/sweep', trials=10, study='thera',  # thera-sweep
    host='127.0.0.1', port=7860,  # thera-demo's address
)
PRECISIONS = ('auto', 'bf16', 'fp16', 'fp32')
SCHEDULES = ('one_cycle', 'step', 'constant')
BALANCES = ('sampler', 'loss', 'none')
DEVICES = ('auto', 'cpu', 'cuda')
PSEUDO_TARGETS = ('hard', 'soft')  # a pseudo-labelled image's target: the teacher's 0/1 call at 0.5, or its probability


def arch_stems(arch):
    "The `stem` values `arch` takes (empty for the package's own nets, which have one stem)."
    if arch == 'resnet18': return RESNET_STEMS
    return () if arch in ARCH_NAMES else tuple(TIMM_STEMS)


def check_arch(arch):
    "Refuses a name that is neither a package arch nor a timm model, naming the closest ones (timm is imported for those only)."
    if arch in ARCH_NAMES: return arch
    import timm
    if isinstance(arch, str) and timm.is_model(arch): return arch
    close = difflib.get_close_matches(str(arch), list(ARCH_NAMES) + timm.list_models(), n=5, cutoff=0.5)
    hint = f"closest names: {', '.join(dict.fromkeys(close))}" if close else "see timm.list_models()"
    raise TheraError(f"{arch!r} is neither a package model ({', '.join(ARCH_NAMES)}) nor a timm model; {hint}", param='arch')


def _choice(value, options, param):
    if value not in options: raise TheraError(f"must be one of {', '.join(options)} (got {value!r})", param=param)


def _is_number(value, kind=(int, float)): return isinstance(value, kind) and not isinstance(value, bool)


def _at_least(value, low, param, kind=int):
    if not _is_number(value, kind) or value < low:
        raise TheraError(f"must be {'an integer' if kind is int else 'a number'} of at least {low} (got {value!r})", param=param)


@dataclass
class FitConfig:
    "Everything that decides what a fit computes: saved with the run, hashed into its identity, compared on resume."
    arch: str = 'airbench'  # Model: airbench (CIFAR speed-run net, the default), simple (the seed's CNN), resnet18, or any timm model name
    method: str = 'adam'  # Training method: adam (fastai's Adam, one-cycle) or airbench (airbench94's: whitened first layer, Nesterov SGD, Lookahead; --arch airbench)
    budget: float = None  # Seconds each fold may take, evaluation included: the fit measures its speed and sets its steps to fit (None: --epochs)
    folds: int = 5  # Number of stratified folds
    epochs: int = None  # Epochs per fold (None: the arch's recipe)
    bs: int = None  # Batch size (None: the arch's recipe)
    lr: float = None  # Peak learning rate (None: the arch's recipe)
    wd: float = None  # Weight decay (adam: 0.01, fastai's decoupled, not on BatchNorm or biases; airbench: per 1024 examples)
    seed: int = 42  # Seed for folds and sampling, and for initialization and TTA unless train_seed is set
    train_seed: int = None  # Seed of the training's own randomness (initialization, batch order, augmentation, TTA draws) on the same folds (None: seed)
    balance: str = 'sampler'  # Class balance: sampler (weighted DataLoader), loss (class-weighted BCE) or none
    balance_strength: float = None  # How far --balance evens the classes: weights ~ class frequency^-s (None: 1, fully; 0.5: halfway on a log scale)
    schedule: str = 'one_cycle'  # LR schedule: one_cycle, step (x0.1 every 10 epochs, the seed's StepLR) or constant
    label_smoothing: float = None  # BCE label smoothing eps: targets eps/2 and 1-eps/2 (None: the arch's recipe)
    flip: bool = True  # Horizontal flip in augmentation
    max_rotate: float = 5.0  # Largest rotation of the augmentation, degrees
    max_shift_px: int = 2  # Largest shift of the augmentation, pixels
    tta: int = 4  # TTA passes for out-of-fold predictions (0: none)
    sample: int = None  # Stratified subset of this many images (None: all)
    widths: tuple = AUTO_WIDTHS  # Conv widths: per block of the simple CNN, e.g. ((16,), (32, 32), ...); of airbench's three blocks, e.g. (32, 128, 128); None: the arch's; 'auto': sized to the budget of a budgeted airbench fit, else the arch's
    head: str = None  # Pooling of the airbench net's last map: max (airbench's global max-pool; None), concat (max and mean) or grid (a 4x4 grid of max-pools, flattened)
    stem: str = None  # Stem for 64x64 (timm models): resnet18 nopool, default or conv3; others x2, x4 or default (None: the recipe's)
    pretrained: bool = False  # Start a timm model from timm's pretrained weights (needs them locally)
    weights: str = None  # Local state-dict file of the timm model to start from
    resize_from: int = None  # Progressive resizing: the first half of the epochs at this many pixels, then full size
    resolution: int = None  # Pixels the model works at: its first layer area-averages the 64 px images to this size (32: a quarter of the FLOPs; None: 64)
    ema: float = None  # Keep an exponential moving average of the weights with this decay (e.g. 0.999) and use it
    bootstrap: float = None  # Soft bootstrapping (Reed et al. 2015): BCE target = b * label + (1 - b) * the model's own probability
    mixup: float = None  # MixUp (Zhang et al. 2018) with this Beta(a, a) (e.g. 0.4): each training image and its target blended with another of its batch
    exclude: str = None  # File of rows or image names to leave out of training (a thera-audit label_issues.csv works)
    distill: str = None  # Teacher run folder (its fold model's probabilities become soft targets) or teacher table (CSV of row, prob)
    distill_weight: float = 0.5  # Weight of the teacher's probability in the soft target (the label has the rest)
    pseudo: str = None  # Teacher run folder: its fold model labels the unlabelled val_img/ images, which join the training rows
    pseudo_confidence: float = 0.9  # Keep a val_img/ image when the teacher's max(p, 1 - p) is at least this
    pseudo_targets: str = 'hard'  # A kept image's target: hard (the teacher's call at 0.5) or soft (its probability)
    hyp: dict = None  # The airbench method's settings (None: AIRBENCH; a dict replaces some of them, e.g. {'lookahead': False})
    image_size: tuple = IMAGE_SHAPE  # (height, width, channels) of the images

    def __post_init__(self):
        check_arch(self.arch)
        _choice(self.method, METHODS, 'method')
        recipe = {**RECIPES.get(self.arch, RECIPES['timm']), **METHOD_DEFAULTS[self.method]}
        for k in ('bs', 'lr', 'wd', 'epochs', 'label_smoothing', 'stem'):  # stem: None where the recipe has none
            if getattr(self, k) is None and not (k == 'epochs' and self.budget is not None): setattr(self, k, recipe.get(k))
        self._set_hyp()
        if _is_number(self.budget, int): self.budget = float(self.budget)
        self.image_size = tuple(self.image_size)
        if self.widths == AUTO_WIDTHS and not self.sized_to_budget: self.widths = None  # nothing to size: the arch's
        if self.widths is not None and self.widths != AUTO_WIDTHS: self.widths = self._widths(self.widths)
        if self.weights is not None: self.weights, self.pretrained = str(self.weights), True
        for k in ('exclude', 'distill', 'pseudo'):  # absolute, so a notebook in another folder finds them
            if getattr(self, k) is not None: setattr(self, k, os.path.abspath(os.path.expanduser(getattr(self, k))))
        self._check()

    def _widths(self, widths):
        "simple: a tuple of blocks, each a tuple of conv widths; airbench: one width for each of its three blocks."
        try:
            shaped = tuple(int(w) for w in widths) if self.arch == 'airbench' else tuple(tuple(int(w) for w in b) for b in widths)
            flat = shaped if self.arch == 'airbench' else [w for b in shaped for w in b]
        except (TypeError, ValueError): shaped, flat = None, []
        if shaped is None or not flat or min(flat) < 1 or (self.arch == 'airbench' and len(shaped) != 3) or not all(shaped):
            want = "three block widths, e.g. (32, 128, 128)" if self.arch == 'airbench' else "blocks of conv widths, e.g. ((16,), (32, 32))"
            raise TheraError(f"must be {want} (got {widths!r})", param='widths')
        return shaped

    def _set_hyp(self):
        if self.method != 'airbench':
            if self.hyp is not None: raise TheraError("applies to --method airbench only", param='hyp')
            return
        if not isinstance(self.hyp, (dict, type(None))): raise TheraError(f"must be a dict (got {type(self.hyp).__name__})", param='hyp')
        unknown = sorted(set(self.hyp or {}) - set(AIRBENCH_HYP))
        if unknown: raise TheraError(f"unknown airbench settings {', '.join(unknown)} (known: {', '.join(AIRBENCH_HYP)})", param='hyp')
        for k, v in (self.hyp or {}).items():
            want = bool if isinstance(AIRBENCH_HYP[k], bool) else (int, float)
            if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
                raise TheraError(f"{k} must be {'true or false' if want is bool else 'a number'} (got {v!r})", param='hyp')
        self.hyp = {**AIRBENCH_HYP, **(self.hyp or {})}

    def _check(self):
        _at_least(self.folds, 2, 'folds'); _at_least(self.bs, 1, 'bs')
        if self.budget is None: _at_least(self.epochs, 1, 'epochs')
        else:
            _at_least(self.budget, 1, 'budget', float)
            if self.epochs is not None: raise TheraError("sets the steps itself: give --budget or --epochs, not both", param='budget')
            if self.resize_from is not None: raise TheraError("needs --epochs (its first half is at low resolution)", param='resize_from')
            if self.method == 'adam' and self.schedule != 'one_cycle': raise TheraError("runs the one-cycle schedule over its steps (drop --schedule)", param='budget')
        if self.method == 'airbench' and self.arch != 'airbench': raise TheraError("the airbench method trains --arch airbench only", param='method')
        _at_least(self.tta, 0, 'tta'); _at_least(self.max_shift_px, 0, 'max_shift_px'); _at_least(self.seed, 0, 'seed')
        if self.train_seed is not None: _at_least(self.train_seed, 0, 'train_seed')
        if self.sample is not None: _at_least(self.sample, 4, 'sample')
        top = 10 if self.method == 'adam' else 1000  # airbench's lr is per 1024 examples (11.5 on CIFAR-10)
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < top: raise TheraError(f"must be in (0, {top}) (got {self.lr!r})", param='lr')
        if not 0 <= self.wd < 1: raise TheraError(f"must be in [0, 1) (got {self.wd!r})", param='wd')
        if not 0 <= self.max_rotate <= 180: raise TheraError(f"must be in [0, 180] degrees (got {self.max_rotate!r})", param='max_rotate')
        if not 0 <= self.label_smoothing < 1: raise TheraError(f"must be in [0, 1) (got {self.label_smoothing})", param='label_smoothing')
        _choice(self.balance, BALANCES, 'balance'); _choice(self.schedule, SCHEDULES, 'schedule')
        if self.balance_strength is not None:
            if not _is_number(self.balance_strength) or not 0 < self.balance_strength <= 1:
                raise TheraError(f"must be in (0, 1] (got {self.balance_strength!r})", param='balance_strength')
            if self.balance == 'none': raise TheraError("sets how far --balance sampler or loss goes: give one of them", param='balance_strength')
        if self.widths is not None and self.arch not in ('simple', 'airbench'): raise TheraError("applies to --arch simple and airbench only", param='widths')
        if self.head is not None:
            if self.arch != 'airbench': raise TheraError("applies to --arch airbench only", param='head')
            _choice(self.head, AIRBENCH_HEADS, 'head')
            if self.head == 'grid' and self.resolution is not None: raise TheraError("grid pools the last map of a 64 px image (4x4): drop --resolution", param='head')
        if arch_stems(self.arch): _choice(self.stem, arch_stems(self.arch), 'stem')
        else:
            for k in ('stem', 'weights'):
                if getattr(self, k) is not None: raise TheraError("applies to timm models only", param=k)
            if self.pretrained: raise TheraError("applies to timm models only", param='pretrained')
        if self.resize_from is not None:
            _at_least(self.resize_from, 16, 'resize_from')
            if self.resize_from >= self.image_size[0]: raise TheraError(f"must be below the image size {self.image_size[0]}", param='resize_from')
            if self.epochs < 2: raise TheraError("needs at least 2 epochs: the first half at low resolution, the rest at full size", param='resize_from')
        if self.resolution is not None:
            _at_least(self.resolution, 16, 'resolution')
            if self.image_size[0] % self.resolution or self.resolution >= self.image_size[0]:
                raise TheraError(f"must divide the image size {self.image_size[0]} and be below it (e.g. 32; got {self.resolution})", param='resolution')
            if self.resize_from is not None: raise TheraError("and --resize-from both set the training size: give one", param='resolution')
        if self.ema is not None and not (isinstance(self.ema, float) and 0 < self.ema < 1): raise TheraError(f"must be in (0, 1) (got {self.ema!r})", param='ema')
        if self.bootstrap is not None and not 0 < self.bootstrap <= 1: raise TheraError(f"must be in (0, 1] (got {self.bootstrap!r})", param='bootstrap')
        if self.mixup is not None and (not _is_number(self.mixup) or self.mixup <= 0):
            raise TheraError(f"must be a number above 0, Beta(a, a)'s a (got {self.mixup!r})", param='mixup')
        _choice(self.pseudo_targets, PSEUDO_TARGETS, 'pseudo_targets')
        if not isinstance(self.pseudo_confidence, (int, float)) or not 0.5 <= self.pseudo_confidence < 1: raise TheraError(f"must be in [0.5, 1) (got {self.pseudo_confidence!r})", param='pseudo_confidence')
        if self.pseudo is not None and self.distill is not None: raise TheraError("and --distill both take a teacher: give one", param='pseudo')
        if not 0 < self.distill_weight <= 1: raise TheraError(f"must be in (0, 1] (got {self.distill_weight!r})", param='distill_weight')
        if self.image_size != IMAGE_SHAPE: raise TheraError(f"must be {IMAGE_SHAPE} (got {self.image_size})", param='image_size')

    @property
    def sized_to_budget(self):
        "Whether `widths='auto'` sizes this config's net: the airbench net under a time budget."
        return self.arch == 'airbench' and self.budget is not None

    def model_kwargs(self):
        "Keyword arguments of `create_model` for this config."
        if self.widths == AUTO_WIDTHS: raise TheraError("auto is chosen when the run starts (`train.sizing.size_for_budget`), before a model is built", param='widths')
        kwargs = self._arch_kwargs()
        return kwargs if self.resolution is None else {**kwargs, 'resolution': self.resolution}

    def _arch_kwargs(self):
        if self.arch == 'simple': return {} if self.widths is None else dict(widths=self.widths)
        if self.arch == 'airbench':
            kwargs = ({} if self.widths is None else dict(widths=self.widths)) | ({} if self.head is None else dict(head=self.head))
            if self.method != 'airbench': return kwargs
            h = self.hyp
            return dict(kwargs, whiten=h['whiten'], bn_momentum=h['bn_momentum'], bn_weight=h['bn_weight'], dirac=h['dirac'])
        if not arch_stems(self.arch): return {}
        return dict(stem=self.stem, pretrained=self.pretrained, weights=self.weights)

    def aug_kwargs(self):
        "Keyword arguments of the batch augmentation; airbench's alternating flip replaces the random one."
        return dict(flip=self.flip and not self.alternating_flip, max_rotate=self.max_rotate, max_shift_px=self.max_shift_px)

    @property
    def training_seed(self):
        "The seed of the training's randomness: `train_seed`, or `seed` when it is unset."
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def alternating_flip(self): return self.flip and self.method == 'airbench' and self.hyp['alt_flip']
    def to_dict(self): return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d, where=None):
        "The config saved in a run folder; unknown or bad fields are one `TheraError` naming `where`."
        names = {f.name for f in fields(cls)}
        if isinstance(d, dict) and 'method' not in d: d = {**d, 'method': 'adam'}  # configs written before the method existed
        if isinstance(d, dict) and 'widths' not in d: d = {**d, 'widths': None}  # ... before the widths: the arch's, never sized
        unknown = sorted(set(d) - names)
        if unknown: raise TheraError(f"config has unknown fields {', '.join(unknown)} (written by another version?)", where)
        try: return cls(**d)
        except TheraError as e: raise TheraError(f"config field {e.param}: {e.message}", where) from None


def native_bf16(device='cpu'):
    "Whether `device` runs bfloat16 convolutions natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX)."
    import torch
    from .compat import mkldnn_bf16_supported
    if torch.device(device).type == 'cuda': return torch.cuda.is_bf16_supported()
    return mkldnn_bf16_supported()


@dataclass
class Runtime:
    "How a fit or a prediction runs, not what it computes: recorded per fold, never a reason to refuse a resume."
    device: str = 'auto'  # auto (a GPU where one is visible), cpu or cuda
    precision: str = 'auto'  # bf16 or fp16 (autocast; fp16 on CUDA only, with a gradient scaler), fp32, or auto: bf16 where the device runs it natively, else fp16 on a GPU, else fp32
    channels_last: bool = True  # Channels-last memory layout
    threads: int = None  # Torch threads (None: torch's default, all cores)

    def __post_init__(self):
        _choice(self.device, DEVICES, 'device'); _choice(self.precision, PRECISIONS, 'precision')
        if self.threads is not None: _at_least(self.threads, 1, 'threads')
        if self.device != 'cuda' and self.precision != 'fp16': return
        import torch
        if self.device == 'cuda' and not torch.cuda.is_available(): raise TheraError("is cuda but no CUDA GPU is visible", param='device')
        if self.precision == 'fp16' and not torch.cuda.is_available(): raise TheraError("fp16 needs a CUDA GPU (use bf16 or fp32 on a CPU)", param='precision')

    def resolved(self):
        "The concrete settings on this machine: a device, a precision and the thread count."
        import torch
        device = ('cuda' if torch.cuda.is_available() else 'cpu') if self.device == 'auto' else self.device
        fallback = 'fp16' if device == 'cuda' else 'fp32'
        precision = ('bf16' if native_bf16(device) else fallback) if self.precision == 'auto' else self.precision
        return dict(device=device, precision=precision, channels_last=self.channels_last,
                    threads=self.threads or torch.get_num_threads(), host=platform.node(), cpu=cpu_model())

    def apply(self):
        "Sets the thread count of this process (torch and its interop pool)."
        if self.threads:
            import torch
            torch.set_num_threads(self.threads)


def cpu_model(cpuinfo='/proc/cpuinfo'):
    """The CPU as its speed depends on it: model name, family and model, and the widest vector and bf16 flags
    ('AMD EPYC, family 25 model 17, avx512f avx512_bf16'). A shared machine's CPU can change between runs, and a
    run's minutes only compare with another's on the same CPU. Outside Linux, what `platform` says."""
    try: first = open(cpuinfo).read().split('\n\n')[0]
    except OSError: return platform.processor() or platform.machine()
    info = dict(line.split(':', 1) for line in first.splitlines() if ':' in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get('flags', '').split())
    vector = next((f for f in ('avx512f', 'avx2', 'avx') if f in flags), None)
    bf16 = [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]
    parts = [info.get('model name', platform.processor() or platform.machine())]
    if 'cpu family' in info: parts.append(f"family {info['cpu family']} model {info.get('model', '?')}")
    if vector or bf16: parts.append(' '.join(([vector] if vector else []) + bf16))
    return ', '.join(parts)


def library_versions():
    "Versions that decide what a run computes, saved with its config and each fold; the package's git commit too."
    import fastai, numpy, sklearn, timm, torch
    from . import __version__
    return dict(thera_fastai=__version__, commit=package_commit(), torch=torch.__version__, fastai=fastai.__version__,
                timm=timm.__version__, numpy=numpy.__version__, sklearn=sklearn.__version__, python=platform.python_version())


def package_commit():
    """The git commit the package runs from, with '+changes' when its files differ from it; None outside a checkout
    (an installed wheel). A study's rows can then be traced to the code that made them."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(['git', '-C', here, 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10)
        if head.returncode: return None
        dirty = subprocess.run(['git', '-C', here, 'status', '--porcelain', '--untracked-files=no', '--', '.'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError): return None
    return head.stdout.strip() + ('+changes' if dirty else '')


def command_line():
    "The command that made a run or fold, as typed (the program's name and its arguments)."
    import sys
    return [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv and sys.argv[0] else []
