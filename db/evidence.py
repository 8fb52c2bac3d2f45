"""Review decisions as evidence about the model's confidence (read-only).

Every human accept or reject of a pseudo-label is a labelled observation: the model predicted a
class with some confidence, and a person said whether it was right. ``review_observations`` returns
them for one round: one row per (sample, head) a person decided, from the current pseudo-label
state (an undo removes the observation, a later decision replaces it). Automatic acceptances
(``meiju pseudo-label --auto``, no user) are left out: they are not evidence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from db.models import Decision, Prediction, PseudoLabel, ReviewRound


def review_observations(s: Session, *, round_id: int) -> list[dict[str, Any]]:
    """Human decisions of a round with the round model's prediction.

    Returns:
        ``[{"head", "predicted", "confidence", "accepted"}]``: ``accepted`` is True when the person
        accepted the predicted class, False when they rejected it or set another class (an
        override). Ordered by head, then confidence.
    """
    rnd = s.get(ReviewRound, round_id)
    if rnd is None:
        return []
    rows = s.execute(
        select(
            PseudoLabel.head,
            PseudoLabel.label,
            PseudoLabel.state,
            Prediction.label,
            Prediction.confidence,
        )
        .join(Decision, Decision.id == PseudoLabel.decision_id)
        .join(
            Prediction,
            and_(
                Prediction.model_version_id == rnd.model_version_id,
                Prediction.sample_id == PseudoLabel.sample_id,
                Prediction.head == PseudoLabel.head,
            ),
        )
        .where(
            PseudoLabel.round_id == round_id,
            PseudoLabel.state.in_(("accepted", "rejected")),
            Decision.user_id.is_not(None),
        )
        .order_by(PseudoLabel.head, Prediction.confidence)
    ).all()
    return [
        {
            "head": head,
            "predicted": predicted,
            "confidence": float(conf),
            "accepted": state == "accepted" and label == predicted,
        }
        for head, label, state, predicted, conf in rows
    ]
