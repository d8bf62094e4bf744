"""autoseg: self-configuring 3D medical image segmentation (nnU-Net's method), BraTS first.

Stages, one module or subpackage each: ``convert`` -> ``verify`` -> ``fingerprint`` ->
``planning`` -> ``preprocessing`` -> ``data`` + ``network`` + ``training`` ->
``inference`` -> ``ensemble`` / ``postprocessing`` -> ``evaluation``. ``cli`` only parses
arguments and calls them.
"""

__version__ = "0.1.0"
