"""Transform's preprocessing_fn for both kinds. Runs in TFT's analyze/transform and, being
part of the exported graph, again at serving time: clients send image bytes or raw text."""
import tensorflow as tf
import tensorflow_transform as tft

from modules import features as F
from modules import image_contract
from modules.settings import ModuleSettings


def dense_1d(x: tf.Tensor) -> tf.Tensor:
    """Raw features arrive as [N, 1] dense or as sparse (schema without shape); make them [N]."""
    if isinstance(x, tf.SparseTensor):
        default = "" if x.dtype == tf.string else 0
        x = tf.sparse.to_dense(x, default_value=default)
        x = x[:, :1]
        return tf.reshape(x, [-1])
    return tf.reshape(x, [-1])


def decode_images(image_bytes: tf.Tensor, size: int, channels: int) -> tf.Tensor:
    """Encoded images [N] -> float32 [N, size, size, channels] in [0, 1].

    Decodes with the image contract's graph decoder (modules/image_contract.py: PNG, grey/RGB
    JPEG, GIF, 24-bit BMP; alpha dropped; grey <-> RGB to `channels`), then resizes
    bilinearly. Raises InvalidArgumentError (when run) for bytes of any other format.
    """
    def decode_one(data):
        image = image_contract.to_channels(image_contract.served_pixels(data), channels)
        image = tf.image.resize(image, [size, size])
        image.set_shape([size, size, channels])
        return image / 255.0
    return tf.map_fn(decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32))


VOCABULARY_NAME = "tokens"  # the text vocabulary's TFT asset (components/transform.py checks it)
NGRAM_VOCABULARY_NAME = "ngrams"  # the word and word-pair vocabulary of the tfidf model
# An n-gram must occur in at least this many training texts to get a column of its own: one
# seen once cannot generalise, and at 2,000 reviews most bigrams occur once.
NGRAM_MIN_DOCUMENTS = 2

# Scripts written without spaces between words: each character is a token of its own
# (unigrams; Korean Hangul is written with spaces and is split like other scripts).
_ONE_CHARACTER_TOKENS = r"\p{Han}\p{Hiragana}\p{Katakana}"
_WORD = r"\pL\pM\pN"  # letters, combining marks, digits of any script


def normalize_text(text: tf.Tensor) -> tf.Tensor:
    """Raw strings [N] -> normalised strings [N] whose space-separated words are the tokens.

    Unicode-aware and part of the exported graph, so train and serve tokenise alike (RE2
    character classes: \\pL letters, \\pM marks, \\pN digits, \\p{So} symbols such as emoji):
      * lower-cased as UTF-8 (Cyrillic, Greek, accented Latin letters, not only ASCII);
      * HTML line breaks removed;
      * Chinese and Japanese characters (Han, Hiragana, Katakana) and symbols/emoji become
        one-character tokens, so text without spaces still has words;
      * variation selectors and zero-width joiners are dropped; every other character that
        is not a letter, mark or digit (punctuation, any kind of space) separates words;
      * apostrophes are kept inside words ("don't", "l'été") and dropped at word edges.
    """
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"<br\s*/?>", " ")
    text = tf.strings.regex_replace(text, r"[\x{FE00}-\x{FE0F}\x{200D}]", "")
    text = tf.strings.regex_replace(text, rf"([{_ONE_CHARACTER_TOKENS}\p{{So}}])", r" \1 ")
    text = tf.strings.regex_replace(text, rf"[^{_WORD}\p{{So}}']", " ")
    return tf.strings.regex_replace(text, rf"'([^{_WORD}]|$)|(^|[^{_WORD}])'", " ")


def tokenize(text: tf.Tensor, max_tokens: int) -> tf.SparseTensor:
    """Raw strings [N] -> sparse string tokens [N, max_tokens] (truncated, no padding entries)."""
    tokens = tf.strings.split(normalize_text(text))[:, :max_tokens].to_sparse()
    return tf.SparseTensor(tokens.indices, tokens.values,
                           tf.stack([tokens.dense_shape[0], tf.constant(max_tokens, tf.int64)]))


def tfidf_ngrams(text: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """Raw strings [N] -> float32 [N, vocab_size]: TF-IDF of the text's words and word pairs,
    each counted once per text, each row scaled to unit L2 norm.

    The vocabulary (TFT asset NGRAM_VOCABULARY_NAME) holds the `vocab_size` unigrams and
    bigrams found in the most training texts, each in at least NGRAM_MIN_DOCUMENTS of them.
    N-grams outside it are dropped rather than pooled in an OOV column: a review has hundreds
    of rare n-grams, whose pooled weight would dominate the row's norm. Weights: tft.tfidf on
    the per-text set of known n-grams (tft.bag_of_words), so tf = 1 / their number and
    idf = 1 + ln((1 + texts) / (1 + texts with the n-gram)); the L2 normalisation cancels the
    tf factor, leaving presence x idf, which measured best on IMDB reviews
    (bench/results/text_models.md). A text without a known n-gram gives a zero row.
    """
    words = tf.strings.split(normalize_text(text)).to_sparse()
    bag = tft.bag_of_words(words, ngram_range=(1, 2), separator=" ")
    ids = tft.compute_and_apply_vocabulary(
        bag, top_k=vocab_size, frequency_threshold=NGRAM_MIN_DOCUMENTS, num_oov_buckets=0, default_value=-1,
        vocab_filename=NGRAM_VOCABULARY_NAME)
    index, weight = tft.tfidf(tf.sparse.retain(ids, ids.values >= 0), vocab_size)
    rows = tf.cast(tf.shape(text)[0], tf.int64)
    dense = tf.scatter_nd(tf.stack([index.indices[:, 0], index.values], axis=1), weight.values,
                          tf.stack([rows, tf.constant(vocab_size, tf.int64)]))
    return tf.reshape(tf.math.l2_normalize(dense, axis=1), [-1, vocab_size])


def preprocessing_fn(inputs, custom_config):
    """TFT preprocessing_fn (Transform imports it by name from the installed package).

    Args:
      inputs: raw features by name as TFT batches them: `image_raw` (string, encoded image
        bytes) or `text` (string), optional `label` (int64); dense [N, 1] or sparse.
      custom_config: ModuleSettings.to_custom_config() (kind, image_size, channels,
        vocab_size, oov_buckets, max_tokens, ...).
    Returns:
      image: {"image": float32 [N, image_size, image_size, channels] in [0, 1]};
      text: {"tokens": int64 [N, max_tokens] vocabulary ids (0 = padding, 1..vocab_size the
        vocabulary by frequency, then OOV buckets)}, always (components/transform.py checks its
        vocabulary), plus the bag the model reads: "multi_hot" float32 [N, vocab_size +
        oov_buckets] 0/1 (model multihot) or "tfidf" float32 [N, ngram_vocab_size]
        (model tfidf, see tfidf_ngrams);
      plus "label": int64 [N] when the input has labels (not at serving time).
    Raises:
      ModuleSettingsError: custom_config is not a ModuleSettings dict.
    """
    settings = ModuleSettings.from_custom_config(custom_config)
    outputs = {}
    if F.LABEL in inputs:
        outputs[F.LABEL] = dense_1d(inputs[F.LABEL])
    if settings.kind == "image":
        outputs[F.IMAGE] = decode_images(dense_1d(inputs[F.IMAGE_RAW]),
                                         settings.image_size, settings.channels)
        return outputs
    tokens = tokenize(dense_1d(inputs[F.TEXT]), settings.max_tokens)
    ids = tft.compute_and_apply_vocabulary(
        tokens, top_k=settings.vocab_size, num_oov_buckets=settings.oov_buckets,
        vocab_filename=VOCABULARY_NAME)
    # Id 0 is padding, so shift vocabulary and OOV ids up by one.
    ids = tf.SparseTensor(ids.indices, ids.values + 1, ids.dense_shape)
    outputs[F.TOKENS] = tf.sparse.to_dense(ids, default_value=0)
    if settings.model == "tfidf":
        outputs[F.TFIDF] = tfidf_ngrams(dense_1d(inputs[F.TEXT]), settings.ngram_vocab_size)
    if settings.model != "multihot":
        return outputs
    width = settings.vocab_ids
    # Bag of words via bincount: one_hot's [batch, max_tokens, width] intermediate is
    # ~0.5 GB per batch of 64 at the default sizes (and 8 GB at TFT's batches of 1000).
    present = tf.math.bincount(outputs[F.TOKENS], minlength=width, maxlength=width,
                               binary_output=True, axis=-1, dtype=tf.float32)
    outputs[F.MULTI_HOT] = tf.reshape(present[:, 1:], [-1, width - 1])  # drop padding id 0
    return outputs
