"""One module per architecture family; importing them registers their builders."""

from zoo.architectures import alexnet, bn_inception, googlenet, mobilenet_v2, vgg, zfnet  # noqa: F401
from zoo.architectures import fcn, sint  # noqa: F401
from zoo.architectures import dcgan  # noqa: F401
from zoo.architectures import autoencoders  # noqa: F401
from zoo.architectures import spatial_transformer  # noqa: F401
from zoo.architectures import char_rnn  # noqa: F401
from zoo.architectures import faster_rcnn  # noqa: F401
from zoo.architectures import rcnn  # noqa: F401
from zoo.architectures import mask_rcnn  # noqa: F401
