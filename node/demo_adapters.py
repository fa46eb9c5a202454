"""Demo LoRA adapters for `openlora dev`: styles a small chat model picks up in a couple of CPU minutes.

- `pirate`: answers open with "Arr, matey!", talk like a pirate ("ye", "be", "me hearty") and end "Yo ho ho!".
- `robot`:  answers open with "BEEP BOOP." and are written in ALL CAPS.

The training data is generated here from templates (prompts about everyday topics, each with one plain fact
restyled per adapter), so the adapters are reproducible from source. `ensure_demo_adapters` trains each one
once and caches it under `<OPENLORA_HOME>/demo-adapters/<name>/` (with its manifest in `<name>.json`); the
cache key covers the dataset, the hyperparameters and the base model, so changing any of them retrains.
`DEMO_PROMPTS` are prompts about topics that are not in the training data: the styles must generalise to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from inference.embedded import exclusive_lock, openlora_home
from inference.models import LoadedModel
from inference.training import StepLog, train_lora

CACHE_FORMAT = 1

# (topic as it reads in a prompt, one plain fact about it). None of these topics appear in DEMO_PROMPTS.
_FACTS: list[tuple[str, str]] = [
    ("the moon", "The moon orbits the Earth about once a month and reflects light from the sun."),
    ("the ocean", "The ocean covers most of the Earth and is home to fish, whales and coral reefs."),
    ("cats", "Cats are small furry pets that love to sleep, play and chase mice."),
    ("dogs", "Dogs are loyal animals that enjoy walks, games of fetch and being with their people."),
    ("rain", "Rain falls when water in the clouds gets heavy and drops back to the ground."),
    ("the sun", "The sun is a huge star that gives the Earth light and warmth every day."),
    ("bread", "Bread is made from flour, water and yeast, and it is baked in a hot oven."),
    ("trees", "Trees grow from seeds, drink water through their roots and give us shade and fresh air."),
    ("bicycles", "A bicycle has two wheels and pedals, and it is a quiet way to get around town."),
    ("music", "Music is made of rhythm and melody, and people play it to dance, relax or celebrate."),
    ("snow", "Snow is frozen water that falls from the sky as soft white flakes in winter."),
    ("birds", "Birds have feathers and wings, and most of them can fly high in the sky."),
    ("the wind", "The wind is moving air that can cool a hot day or push a ship across the sea."),
    ("books", "Books hold stories and knowledge, and reading them can take you to faraway places."),
    ("apples", "Apples are crunchy fruits that grow on trees and can be red, green or yellow."),
    ("stars", "Stars are giant balls of burning gas that twinkle in the night sky."),
    ("rivers", "Rivers carry fresh water from the hills down to the sea."),
    ("islands", "An island is a piece of land with water all around it."),
    ("gold", "Gold is a shiny yellow metal that people have treasured for thousands of years."),
    ("ships", "Ships are large boats that carry people and cargo across the seas."),
    ("maps", "A map is a drawing of a place that helps you find your way."),
    ("the weather", "The weather changes from day to day, bringing sun, clouds, rain or storms."),
    ("volcanoes", "A volcano is a mountain that can erupt with hot lava, ash and smoke."),
    ("the desert", "A desert is a dry place with very little rain, like the Sahara."),
    ("computers", "A computer is a machine that follows instructions to store and process information."),
    ("the internet", "The internet connects computers around the world so people can share information."),
    ("pizza", "Pizza is a flat bread topped with tomato sauce, cheese and other tasty things."),
    ("chocolate", "Chocolate is a sweet treat made from the beans of the cacao tree."),
    ("gardening", "Gardening means planting seeds, watering them and helping plants grow."),
    ("sleep", "Sleep lets your body and mind rest, and most adults need about eight hours a night."),
    ("exercise", "Exercise makes your heart and muscles strong and helps you feel good."),
    ("friendship", "Friendship is a bond between people who care about and help each other."),
    ("the library", "A library is a place where you can borrow books for free."),
    ("trains", "Trains run on rails and carry many people or goods from city to city."),
    ("the forest", "A forest is a large area full of trees, plants and wild animals."),
    ("honey", "Honey is a sweet golden food that bees make from the nectar of flowers."),
    ("rainbows", "A rainbow appears when sunlight shines through raindrops and splits into colours."),
    ("the beach", "A beach is a strip of sand or pebbles where the land meets the sea."),
    ("clocks", "A clock is a device that shows the time with hands or numbers."),
    ("spiders", "Spiders have eight legs and spin silk webs to catch insects."),
    ("whales", "Whales are huge animals that live in the sea and breathe air through a blowhole."),
    ("thunderstorms", "A thunderstorm brings lightning, loud thunder and heavy rain."),
    ("cheese", "Cheese is made from milk and comes in many flavours, from mild to strong."),
    ("the alphabet", "The English alphabet has twenty six letters, from A to Z."),
    ("robots", "Robots are machines that can be programmed to do jobs by themselves."),
    ("candles", "A candle is a stick of wax with a wick that gives light when it burns."),
    ("soup", "Soup is a warm dish made by cooking vegetables, meat or beans in water."),
    ("the piano", "A piano has black and white keys that strike strings to make music."),
]

_PROMPT_TEMPLATES: list[str] = [
    "Tell me about {topic}.",
    "What can you tell me about {topic}?",
    "Describe {topic} in one sentence.",
    "Explain {topic} to a child.",
    "I want to learn about {topic}.",
    "Say something interesting about {topic}.",
]
_PROMPTS_PER_TOPIC = 3

# Whole-word replacements that make plain English sound like a pirate (case kept for the first letter).
_PIRATE_WORDS: dict[str, str] = {
    "you": "ye",
    "your": "yer",
    "is": "be",
    "are": "be",
    "my": "me",
    "friend": "matey",
    "friends": "mateys",
    "people": "landlubbers",
    "yes": "aye",
    "hello": "ahoy",
    "the": "th'",
    "of": "o'",
    "money": "doubloons",
    "treasure": "booty",
    "sea": "briny sea",
    "boat": "vessel",
    "stop": "avast",
}
_WORD = re.compile(r"[A-Za-z']+")


def piratify(text: str) -> str:
    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        new = _PIRATE_WORDS.get(word.lower())
        if new is None:
            return word
        return new[0].upper() + new[1:] if word[0].isupper() else new

    return _WORD.sub(swap, text)


def pirate_answer(fact: str) -> str:
    return f"Arr, matey! {piratify(fact)} Yo ho ho!"


def robot_answer(fact: str) -> str:
    return f"BEEP BOOP. {fact.upper()} BEEP."


@dataclass(frozen=True)
class DemoAdapterSpec:
    name: str
    style: Callable[[str], str] = field(compare=False)
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # None = the upper half of the base model's layers (resolved by `for_model`): the backward pass stops
    # half way down, which cuts training time by ~40% and is plenty for a style.
    layers: tuple[int, ...] | None = None
    steps: int = 30
    lr: float = 3e-3
    batch_size: int = 8
    seed: int = 0

    def for_model(self, base: LoadedModel) -> DemoAdapterSpec:
        """This spec with its layers fixed for `base` (the upper half unless set explicitly)."""
        if self.layers is not None:
            return self
        n = base.model.config.num_hidden_layers
        return replace(self, layers=tuple(range(n // 2, n)))

    def examples(self) -> list[tuple[str, str]]:
        out = []
        for i, (topic, fact) in enumerate(_FACTS):
            for j in range(_PROMPTS_PER_TOPIC):
                template = _PROMPT_TEMPLATES[(i + j * 2) % len(_PROMPT_TEMPLATES)]
                prompt = template.format(topic=topic)
                out.append((prompt[0].upper() + prompt[1:], self.style(fact)))
        return out

    def hyperparameters(self) -> dict[str, object]:
        params = asdict(self)
        params.pop("style")
        params["targets"] = list(self.targets)
        params["layers"] = None if self.layers is None else list(self.layers)
        return params

    def cache_key(self, base_name: str) -> str:
        blob = json.dumps(
            {
                "format": CACHE_FORMAT,
                "base": base_name,
                "examples": self.examples(),
                "hyperparameters": self.hyperparameters(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


DEMO_ADAPTERS: tuple[DemoAdapterSpec, ...] = (
    DemoAdapterSpec("pirate", pirate_answer),
    DemoAdapterSpec("robot", robot_answer),
)

# (adapter name, prompt): topics that are not in the training data.
DEMO_PROMPTS: list[tuple[str, str]] = [
    ("pirate", "What is the capital of France?"),
    ("pirate", "What is the best way to travel?"),
    ("pirate", "What should I pack for a holiday?"),
    ("robot", "What is the tallest mountain in the world?"),
    ("robot", "Give me a tip for learning to code."),
    ("robot", "Why do leaves change colour in autumn?"),
]


def demo_adapters_dir() -> Path:
    return openlora_home() / "demo-adapters"


def manifest_path(root: Path, name: str) -> Path:
    """Beside the adapter folder, not in it: the folder holds exactly what a node would accept."""
    return root / f"{name}.json"


def cached_adapter(spec: DemoAdapterSpec, base_name: str, root: Path | None = None) -> Path | None:
    """The cached folder for `spec` trained on `base_name`, or None when absent or stale."""
    root = root or demo_adapters_dir() / base_name
    folder = root / spec.name
    try:
        manifest = json.loads(manifest_path(root, spec.name).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("cache_key") != spec.cache_key(base_name):
        return None
    if not (folder / "adapter_model.safetensors").is_file() or not (folder / "adapter_config.json").is_file():
        return None
    return folder


def train_demo_adapter(
    base: LoadedModel, spec: DemoAdapterSpec, root: Path, on_step: Callable[[StepLog], None] | None = None
) -> Path:
    """Train `spec` on `base` and install it as `<root>/<name>/`, then record `<root>/<name>.json`.

    The manifest is the commit record: it is removed before the folder changes and written (atomically)
    only after the new folder is in place, so a crash at any point leaves the cache either valid or
    visibly stale (retrained on the next call)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / spec.name
    losses: list[float] = []

    def record(log: StepLog) -> None:
        losses.append(log.loss)
        if on_step is not None:
            on_step(log)

    with tempfile.TemporaryDirectory(dir=root, prefix=f".{spec.name}-") as tmp:
        staged = Path(tmp) / "adapter"
        started = time.monotonic()
        train_lora(
            base,
            spec.examples(),
            staged,
            rank=spec.rank,
            alpha=spec.alpha,
            targets=spec.targets,
            steps=spec.steps,
            lr=spec.lr,
            batch_size=spec.batch_size,
            seed=spec.seed,
            layers=spec.layers,
            on_step=record,
        )
        manifest = {
            "name": spec.name,
            "base_model": base.name,
            "cache_key": spec.cache_key(base.name),
            "hyperparameters": spec.hyperparameters(),
            "examples": len(spec.examples()),
            "train_seconds": round(time.monotonic() - started, 1),
            "first_loss": losses[0],
            "last_loss": losses[-1],
        }
        manifest_path(root, spec.name).unlink(missing_ok=True)
        if target.exists():
            os.replace(target, Path(tmp) / "stale")
        os.replace(staged, target)
        staged_manifest = Path(tmp) / "manifest.json"
        staged_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staged_manifest, manifest_path(root, spec.name))
    return target


def ensure_demo_adapters(
    base: LoadedModel,
    *,
    specs: tuple[DemoAdapterSpec, ...] = DEMO_ADAPTERS,
    root: Path | None = None,
    on_step: Callable[[str, StepLog], None] | None = None,
) -> dict[str, Path]:
    """Each demo adapter's folder, trained on `base` the first time and read from the cache after that."""
    root = root or demo_adapters_dir() / base.name
    specs = tuple(spec.for_model(base) for spec in specs)
    out: dict[str, Path] = {}
    with exclusive_lock(root / ".lock"):
        for spec in specs:
            folder = cached_adapter(spec, base.name, root)
            if folder is None:
                step_cb = None if on_step is None else (lambda log, n=spec.name: on_step(n, log))
                folder = train_demo_adapter(base, spec, root, step_cb)
            out[spec.name] = folder
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m node.demo_adapters [--threads N]`: prepare SmolLM2 and the demo adapters, then print each
    demo prompt's answer from the base model and from its adapter (greedy, 48 tokens)."""
    import argparse

    import torch

    from inference.embedded import load_smollm2
    from inference.reference import peft_generate

    parser = argparse.ArgumentParser(prog="python -m node.demo_adapters", description=main.__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_smollm2()
    started = time.monotonic()

    def progress(name: str, log: StepLog) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {name} step {log.step} loss {log.loss:.3f}", flush=True)

    folders = ensure_demo_adapters(base, on_step=progress)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    for name, prompt in DEMO_PROMPTS:
        print(f"\n[{name}] {prompt}")
        print(f"  base:    {peft_generate(base, None, prompt, args.max_tokens).text!r}")
        print(f"  adapter: {peft_generate(base, folders[name], prompt, args.max_tokens).text!r}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
