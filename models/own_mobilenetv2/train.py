"""A researcher's own model, trained the way most brain-tumor MRI projects train theirs.

It is deliberately *not* an xai_bt model: plain Keras, an ImageNet-style backbone nested as one layer
(MobileNetV2, here from scratch: this machine has no internet for ImageNet weights), an augmentation
block nested as a Sequential, a softmax output, RGB input scaled to 0-1 by the data pipeline, classes in
the folder order `image_dataset_from_directory` gives (glioma, meningioma, notumor, pituitary), and a
random 15% validation split. It exists so that the "bring your own model" path (`--model my_model.keras
--classes ...`, `xai_bt import-model`) is shown and tested on a real trained network, nested backbone
included.

    python models/own_mobilenetv2/train.py --data ../shared/data/brain-tumor-mri --epochs 12

Checkpoints every epoch (BackupAndRestore), so a killed run resumes where it stopped. Writes
my_model.keras and my_model.h5 (the same network in both formats) next to this script.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZE = 128


def build() -> keras.Model:
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.05)],
                               name="augmentation")
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None,
                                              alpha=0.35)
    for layer in backbone.layers:  # keras.applications' BN momentum (0.999) suits fine-tuning, not a scratch run
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = backbone(augment(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="my_model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/brain-tumor-mri")
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args()
    keras.utils.set_random_seed(0)
    common = dict(labels="inferred", label_mode="int", color_mode="rgb", image_size=(SIZE, SIZE),
                  batch_size=32, validation_split=0.15, seed=0)
    train = keras.utils.image_dataset_from_directory(Path(args.data) / "Training", subset="training", **common)
    val = keras.utils.image_dataset_from_directory(Path(args.data) / "Training", subset="validation", **common)
    print("classes:", train.class_names)
    scale = lambda x, y: (x / 255.0, y)  # noqa: E731  (the data pipeline scales, as ImageDataGenerator(rescale=1/255))
    train = train.map(scale).prefetch(tf.data.AUTOTUNE)
    val = val.map(scale).prefetch(tf.data.AUTOTUNE)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.BackupAndRestore(str(HERE / ".checkpoint")),
                 keras.callbacks.ModelCheckpoint(str(HERE / ".best.keras"), monitor="val_accuracy",
                                                 save_best_only=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)]
    model.fit(train, validation_data=val, epochs=args.epochs, callbacks=callbacks, verbose=2)
    best = keras.saving.load_model(HERE / ".best.keras")
    best.save(HERE / "my_model.keras")
    best.save(HERE / "my_model.h5")
    print("saved", HERE / "my_model.keras", HERE / "my_model.h5")


if __name__ == "__main__":
    main()
