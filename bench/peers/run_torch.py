"""Runner for Hugging Face `transformers.BertModel` on the PyTorch CPU build, in .venvs/torch.

Inference runs `BertModel` in eval mode under `torch.inference_mode()`. The
training step uses `BertForMaskedLM`'s encoder and its own MLM head
(`model.cls`: dense + GELU + LayerNorm, decoder tied to the word embeddings),
applied only at the masked positions as the TF implementations do, with
`torch.optim.Adam`. Variant `eager` is the default attention implementation
(scaled_dot_product_attention).

Run: bench/peers/.venvs/torch/bin/python bench/peers/run_torch.py --config minilm --mode inference
"""

from __future__ import annotations

import runner

VARIANTS = ("eager",)


def config_for(shape, transformers):
    return transformers.BertConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size, hidden_act="gelu",
        max_position_embeddings=shape.max_position_embeddings, type_vocab_size=shape.type_vocab_size,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )


def main():
    args = runner.parse_args(variants=VARIANTS)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = config_for(args.shape, transformers)
    batch = runner.make_batch(args)
    token_ids = torch.from_numpy(batch.token_ids).long()
    segment_ids = torch.from_numpy(batch.segment_ids).long()
    padding_mask = torch.from_numpy(batch.padding_mask).long()

    if args.mode == "inference":
        model = transformers.BertModel(config).eval()

        def step():
            with torch.inference_mode():
                return model(input_ids=token_ids, attention_mask=padding_mask,
                             token_type_ids=segment_ids).last_hidden_state.numpy()
    else:
        model = transformers.BertForMaskedLM(config).train()
        positions = torch.from_numpy(batch.mask_positions).long()
        labels = torch.from_numpy(batch.mask_labels).long()
        optimizer = torch.optim.Adam(model.parameters(), lr=runner.LEARNING_RATE)
        hidden = config.hidden_size

        def step():
            optimizer.zero_grad(set_to_none=True)
            sequence = model.bert(input_ids=token_ids, attention_mask=padding_mask,
                                  token_type_ids=segment_ids).last_hidden_state
            masked = torch.gather(sequence, 1, positions.unsqueeze(-1).expand(-1, -1, hidden))
            logits = model.cls(masked)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            loss.backward()
            optimizer.step()
            return loss.item()

    step()  # first call (allocations, lazy init), untimed
    params = sum(p.numel() for p in model.parameters())
    runner.measure(step, args, "torch", extra={
        "params": int(params), "attn_implementation": model.config._attn_implementation,
        "framework": f"torch {torch.__version__} + transformers {transformers.__version__}",
        "torch_threads": torch.get_num_threads(),
    })


if __name__ == "__main__":
    main()
