"""The Python API: a user's model (by path), rows and reward function in a few lines."""

from __future__ import annotations

import ibtpo
from ibtpo.metrics import read_metrics


def test_ten_line_api_trains_a_users_model_on_rows_with_a_reward_function(chat_checkpoint,
                                                                          tmp_path):
    seen = {}

    def has_answer(prompts, completions, answer, **columns):  # TRL's reward signature
        seen.update(prompts=prompts, columns=set(columns))
        return [float(a in c) for c, a in zip(completions, answer)]

    rows = [{"prompt": f"{a}+{b}=?", "answer": str(a + b), "level": a % 2}
            for a in range(5) for b in range(5)]
    trainer = ibtpo.make_trainer(model=str(chat_checkpoint), dataset=rows, reward_funcs=has_answer,
                                 config="grpo", progress=False,
                                 settings={"model.chat_template": True, "train.steps": 1,
                                           "train.prompts_per_step": 2, "task.eval_size": 2,
                                           "eval.size": 2, "eval.k": 1,
                                           "sampling.max_new_tokens": 8,
                                           "train.out_dir": str(tmp_path),
                                           "train.tensorboard": False})
    trainer.train()
    assert trainer.step == 1 and trainer.cfg.rollout.scorer == "independent"
    assert seen["columns"] == {"level"} and seen["prompts"][0].endswith("=?")
    rows_logged = read_metrics(tmp_path)
    assert [r["step"] for r in rows_logged] == [0, 1]
    assert rows_logged[1]["rollout/num_trajectories"] == 2 * 8  # grpo: G = 8 per prompt


def test_eval_dataset_is_the_held_out_set(chat_checkpoint, tmp_path):
    def has_answer(prompts, completions, answer, **columns):
        return [float(a in c) for c, a in zip(completions, answer)]

    train = [{"prompt": f"{a}+{b}=?", "answer": str(a + b)} for a in range(3) for b in range(3)]
    held = [{"prompt": "7+7=?", "answer": "14"}, {"prompt": "8+8=?", "answer": "16"}]
    trainer = ibtpo.make_trainer(model=str(chat_checkpoint), dataset=train, eval_dataset=held,
                                 reward_funcs=has_answer, config="grpo", progress=False,
                                 settings={"model.chat_template": True,
                                           "train.out_dir": str(tmp_path),
                                           "train.tensorboard": False})
    assert [p.prompt for p in trainer.eval_problems] == ["7+7=?", "8+8=?"]
    assert len(trainer.task.train_set()) == 9  # the whole dataset trains: no split of it
