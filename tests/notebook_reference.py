"""The original notebook's code, run under tf.keras 2 (TF_USE_LEGACY_KERAS=1, package tf-keras), small.

Usage: python notebook_reference.py CORPUS WORKDIR
Writes WORKDIR/training_checkpoints/ckpt_N.* exactly as the notebook did, then, as the notebook's generation
section does, rebuilds the model with batch size 1, loads the latest checkpoint, and saves the logits it gives
for the last 256 characters of the corpus to WORKDIR/reference_logits.npy.
"""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

corpus, workdir = sys.argv[1], sys.argv[2]
tf.random.set_seed(0)

text = open(corpus, "rb").read().decode(encoding="utf-8")
vocab = sorted(set(text))
char2idx = {u: i for i, u in enumerate(vocab)}
text_as_int = np.array([char2idx[c] for c in text])

seq_length = 100
char_dataset = tf.data.Dataset.from_tensor_slices(text_as_int)
sequences = char_dataset.batch(seq_length + 1, drop_remainder=True)


def split_input_target(chunk):
    return chunk[:-1], chunk[1:]


dataset = sequences.map(split_input_target)
BATCH_SIZE, BUFFER_SIZE = 8, 10000
dataset = dataset.shuffle(BUFFER_SIZE).batch(BATCH_SIZE, drop_remainder=True)
vocab_size, embedding_dim, rnn_units = len(vocab), 8, 16  # the notebook: 256 and 1024


def build_model(vocab_size, embedding_dim, rnn_units, batch_size):
    return tf.keras.Sequential([
        tf.keras.layers.Embedding(vocab_size, embedding_dim, batch_input_shape=[batch_size, None]),
        tf.keras.layers.LSTM(rnn_units, return_sequences=True, stateful=True, recurrent_initializer="glorot_uniform"),
        tf.keras.layers.Dense(vocab_size),
    ])


model = build_model(vocab_size, embedding_dim, rnn_units, BATCH_SIZE)


def loss(labels, logits):
    return tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


model.compile(optimizer="adam", loss=loss)
checkpoint_dir = os.path.join(workdir, "training_checkpoints")
checkpoint_callback = tf.keras.callbacks.ModelCheckpoint(
    filepath=os.path.join(checkpoint_dir, "ckpt_{epoch}"), save_weights_only=True)
model.fit(dataset, epochs=2, callbacks=[checkpoint_callback], verbose=0)

model = build_model(vocab_size, embedding_dim, rnn_units, batch_size=1)
model.load_weights(tf.train.latest_checkpoint(checkpoint_dir))
model.build(tf.TensorShape([1, None]))
ids = text_as_int[-256:][None, :]
np.save(os.path.join(workdir, "reference_logits.npy"), model(ids).numpy()[0])
print("ok", tf.train.latest_checkpoint(checkpoint_dir))
