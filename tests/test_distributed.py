"""Fine-tuning under tf.distribute.MirroredStrategy on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the check runs
in its own process. With no batch norm in the model, one SGD step over a global
batch split across two replicas must equal the same step on one device.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, zoo

    def build():
        keras.utils.set_random_seed(0)
        return zoo.load("vgg11", weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg")

    def one_step(strategy):
        with strategy.scope():
            backbone = build()
            model = keras.Sequential([backbone, keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed=1))])
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 4, size=8)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return [w.numpy() for w in model.weights]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    distributed = one_step(mirrored)
    single = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(distributed, single))
    print("max weight difference", worst)
    assert worst < 1e-5, worst
    """
)


def test_mirrored_strategy_step_equals_single_device():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max weight difference" in result.stdout
