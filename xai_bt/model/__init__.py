"""The model bundle: preprocessing, architectures, training, provenance, its model card."""

#: the `--arch` names of `python -m xai_bt train`, here without Keras so that `--help` is instant;
#: `architectures.ARCHITECTURES` builds them (a test checks the two lists agree)
ARCHITECTURE_NAMES: tuple[str, ...] = ("baseline_cnn", "xai_cnn", "plane_cnn", "vgg16", "resnet50", "mobilenetv2",
                                       "efficientnetb0", "efficientnet_lite0", "efficientnet_lite1",
                                       "efficientnet_lite2")
