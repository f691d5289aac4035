"""The ``model.py`` files of the Triton Python-backend models.

These modules are not imported by trackserve: ``trackserve triton-repo``
(:mod:`trackserve.serving.repository`) copies them into a model repository as
``<model>/1/model.py``, where Triton's Python-backend stub imports them next to
``triton_python_backend_utils``. They stay thin: all logic is in
:mod:`trackserve.serving.backend`.
"""

from pathlib import Path

#: Folder holding the model files.
MODELS_DIR = Path(__file__).resolve().parent
#: The custom model: the whole pipeline in one model.
PIPELINE_MODEL = MODELS_DIR / "pipeline_model.py"
#: One ensemble stage (which one: the ``stage`` parameter of its config).
STAGE_MODEL = MODELS_DIR / "stage_model.py"
