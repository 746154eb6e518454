"""ParaRel relation prompts (Elazar et al. 2021), as CaliNET's contrastive knowledge assessment
reads them: the negatives a fact's own prompt is contrasted with."""

from __future__ import annotations

#: ParaRel relation prompts for the CKA's negatives: dqxiu/CaliNet ``cka/relations.jsonl``
#: (``template``, cut before ``[Y]``), those whose object ends the sentence; P17, P30 and P276
#: share P131's wording and are left out.
# fmt: off
RELATIONS: tuple[tuple[str, str], ...] = (
    ("P19", "{} was born in"), ("P20", "{} died in"), ("P36", "The capital of {} is"),
    ("P37", "The official language of {} is"), ("P101", "{} works in the field of"),
    ("P103", "The native language of {} is"), ("P108", "{} works for"), ("P127", "{} is owned by"),
    ("P131", "{} is located in"), ("P138", "{} is named after"),
    ("P159", "The headquarter of {} is in"), ("P176", "{} is produced by"),
    ("P178", "{} is developed by"), ("P407", "{} was written in"),
    ("P449", "{} was originally aired on"), ("P463", "{} is a member of"),
    ("P495", "{} was created in"), ("P740", "{} was founded in"), ("P937", "{} used to work in"),
    ("P1412", "{} used to communicate in"),
)
# fmt: on
