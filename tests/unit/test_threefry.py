"""The unrolled CPU lowering of JAX's PRNG hash: the published answers, the same bits as JAX's own lowering, and
no loop left in the compiled dropout masks."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from tinybert_jax.threefry import threefry2x32  # conftest installs the lowering in this process

# Known answers of Threefry-2x32 with 20 rounds (key, counter, output), as published with the algorithm.
KNOWN_ANSWERS = [((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
                 ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
                 ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
MASK_BITS = "jax.random.bits(jax.random.PRNGKey(3), (4, 3, 16, 16))"


def test_the_hash_gives_the_published_answers_when_jitted_on_cpu():
    hash_pair = jax.jit(threefry_2x32)
    for key, counter, expected in KNOWN_ANSWERS:
        got = hash_pair(jnp.array(key, jnp.uint32), jnp.array(counter, jnp.uint32))
        assert [int(word) for word in got] == list(expected)
        with np.errstate(over="ignore"):  # the hash wraps around by design
            direct = threefry2x32(*(np.uint32(word) for word in key + counter))
        assert [int(word) for word in direct] == list(expected)


def test_random_bits_equal_those_of_jax_own_lowering():
    ours = np.asarray(jax.jit(lambda: eval(MASK_BITS))())
    # A fresh interpreter that imports the package and its entry point without calling main: importing installs
    # nothing, so it compiles with JAX's rolled-loop lowering.
    code = ("import jax, numpy, tinybert_jax.main, tinybert_jax.threefry; "
            f"print(numpy.asarray({MASK_BITS}).tolist()); "
            f"print(' while(' in jax.jit(lambda: {MASK_BITS}).lower().compile().as_text())")
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    bits, rolled = theirs.stdout.splitlines()
    assert rolled == "True"
    assert ours.tolist() == json.loads(bits)


def test_dropout_masks_compile_without_a_loop():
    compiled = jax.jit(lambda key: jax.random.bernoulli(key, 0.9, (64, 32))).lower(jax.random.PRNGKey(0)).compile()
    assert " while(" not in compiled.as_text()
