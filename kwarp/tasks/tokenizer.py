"""A small byte-level BPE tokenizer trained on the task's texts, saved as a Hugging Face tokenizer.

Byte-level pre-tokenisation (GPT-2 style) keeps the space in front of a word inside its token, so
decoding a completion's ids alone gives " is great." and prompt + completion is the exact text.
The alphabet is limited to the characters of the corpus (anything else maps to <unk>), so a
vocabulary of about a thousand holds every word of the grammar as one token.

Every encoding starts with <bos>; <eos> ends the SFT texts and is the policy's stop token; <pad>
is its own token, distinct from <eos>, so a sequence-classification reward model finds the last
real token of a padded batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    texts = list(texts)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted({ch for text in texts for ch in text})
    # ByteLevel maps each byte to a printable character: train on the mapped alphabet of the corpus.
    mapped = sorted({piece for ch in alphabet for piece, _ in byte_level.pre_tokenize_str(ch)} | {"Ġ"})
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=[c for piece in mapped for c in piece],
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="left",  # decoder-only generation pads on the left
        clean_up_tokenization_spaces=False,  # keep decode(encode(text)) == text
    )
