"""Language models: outputs [batch, tokens, vocab] with token labels, scored per token; a causal LM
given labels=input_ids reports next-token accuracy and the perplexity of its own loss.

Models come from tiny transformers configs with random weights (nothing downloads)."""

import math
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from prunelab import Pruner
from prunelab.core.tokens import IGNORE, next_token_targets, token_cross_entropy
from tests.core_models import assert_same_state, state_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 48


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tokens(n=12, length=10, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, 7:] = 0
    labels = ids.clone()
    labels[mask == 0] = IGNORE  # padding is not scored, as a Hugging Face collator marks it
    return ids, mask, labels


def own_loss(model, **batch):
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_perplexity_is_the_exponential_of_the_models_own_loss(build):
    model = build()
    ids, mask, labels = tokens()
    pruner = Pruner(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    m = pruner.evaluate()
    assert m.perplexity == pytest.approx(math.exp(own_loss(model, input_ids=ids, attention_mask=mask, labels=labels)),
                                         rel=1e-4)
    assert m.loss == pytest.approx(math.log(m.perplexity))
    # next-token accuracy: logits[:, :-1] against labels[:, 1:], padding ignored
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    kept = labels[:, 1:] != IGNORE
    expected = (logits[:, :-1].argmax(-1) == labels[:, 1:])[kept].float().mean().item()
    assert m.accuracy == pytest.approx(expected, abs=1e-6)
    assert m.per_class == () and "perplexity" in str(m)
    assert torch.equal(pruner.val_targets, next_token_targets(labels))


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_prune_evaluate_reset_on_a_causal_lm(build):
    model = build()
    ids, mask, labels = tokens()
    before = state_of(model)
    data = ({"input_ids": ids, "attention_mask": mask}, labels)
    pruner = Pruner(model, data, train_data=data)
    dense = pruner.evaluate()
    for criterion in ("magnitude", "taylor", "wanda"):
        pruner.prune(0.5, criterion=criterion)
        assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)
        m = pruner.evaluate()
        # the perplexity after pruning is the model's own loss on its masked weights
        assert m.perplexity == pytest.approx(
            math.exp(own_loss(model, input_ids=ids, attention_mask=mask, labels=labels)), rel=1e-4)
    with pytest.raises(ValueError, match="attribution.*taylor"):
        pruner.prune(0.5, criterion="attribution")
    pruner.reset()
    assert_same_state(model, before)
    assert pruner.evaluate().perplexity == dense.perplexity


def test_a_dataloader_of_causal_lm_batches_and_a_tensor_pair():
    ids, mask, labels = tokens()

    class Texts(Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]}

    model = gpt2()
    expected = math.exp(own_loss(model, input_ids=ids, attention_mask=mask, labels=labels))
    assert Pruner(model, DataLoader(Texts(), batch_size=5)).evaluate().perplexity == pytest.approx(expected, rel=1e-4)
    # one tensor of token ids, its own labels: the same rule
    model = gpt2()
    m = Pruner(model, (ids, ids)).evaluate()
    assert m.perplexity == pytest.approx(math.exp(own_loss(model, input_ids=ids, labels=ids)), rel=1e-4)


def test_finetuning_a_causal_lm_lowers_its_loss():
    model = gpt2()
    ids, mask, labels = tokens(n=16)
    data = ({"input_ids": ids, "attention_mask": mask}, labels)
    pruner = Pruner(model, data, train_data=data).prune(0.5)
    before = pruner.evaluate().perplexity
    pruner.finetune(epochs=3, lr=1e-2, batch_size=8, progress=False)
    after = pruner.evaluate()
    assert after.perplexity < before
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)  # the masks held


def test_token_labels_that_are_not_the_inputs_are_scored_where_they_stand():
    # a masked-LM style batch: labels only at a few positions, not equal to the (masked) inputs
    model = gpt2()
    ids, mask, _ = tokens()
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2] = (ids[:, 2] + 1) % VOCAB
    m = Pruner(model, ({"input_ids": ids, "attention_mask": mask}, labels)).evaluate()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert m.loss == pytest.approx(float(token_cross_entropy(logits, labels)), rel=1e-5)
    assert m.accuracy == pytest.approx(float((logits[:, 2].argmax(-1) == labels[:, 2]).float().mean()), abs=1e-6)


def test_sequence_classification_scores_as_before():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=3,
                                  pad_token_id=0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    ids, mask, _ = tokens()
    y = torch.arange(len(ids)) % 3
    m = Pruner(model, ({"input_ids": ids, "attention_mask": mask}, y)).evaluate()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert m.perplexity is None and len(m.per_class) == 3
    assert m.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-6)
    assert m.loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
