"""Instruction families: the paraphrases that condition the embedding, per question type.

Each family lists its paraphrases; the first is the canonical phrasing, the last `HELD_OUT_PER_FAMILY` never
appear in UserQA (unseen paraphrases for evaluation). `insurance_interest` (synthetic data) and `gender`,
`age` (MovieLens) are held-out families: they never appear in UserQA at all (zero-shot).
"""

from __future__ import annotations

from dataclasses import dataclass

HELD_OUT_PER_FAMILY = 2


@dataclass(frozen=True)
class InstructionFamily:
    name: str
    kind: str  # "future" (next 30 days), "stable" (visible in the history) or "general"
    paraphrases: tuple[str, ...]

    @property
    def canonical(self) -> str:
        return self.paraphrases[0]

    @property
    def train_paraphrases(self) -> tuple[str, ...]:
        return self.paraphrases[:-HELD_OUT_PER_FAMILY]

    @property
    def held_out_paraphrases(self) -> tuple[str, ...]:
        return self.paraphrases[-HELD_OUT_PER_FAMILY:]


FAMILIES: tuple[InstructionFamily, ...] = (
    InstructionFamily(
        "fund_purchase",
        "future",
        (
            "Represent this user for predicting fund purchases in the next 30 days.",
            "Will this user buy a fund next month?",
            "Embed the user for fund marketing.",
            "Represent the user to find likely buyers of investment funds.",
            "How likely is this user to purchase wealth-management funds soon?",
            "User representation for a mutual fund campaign.",
            "Does this customer plan to invest in funds in the coming month?",
            "Represent this user for predicting investment product purchases.",
            "Encode the user for targeting fund products.",
            "Is this user about to buy a fund?",
            "Represent this person for forecasting whether they will invest in a fund within a month.",
            "Which users will purchase funds shortly? Represent this one accordingly.",
        ),
    ),
    InstructionFamily(
        "churn",
        "future",
        (
            "Represent this user for predicting churn in the next 30 days.",
            "Will this user stop using the app next month?",
            "Embed the user for churn prevention.",
            "Represent the user to find customers about to become inactive.",
            "How likely is this user to stay active over the next month?",
            "User representation for a retention campaign.",
            "Is this customer going to leave the platform soon?",
            "Represent this user for predicting inactivity.",
            "Encode the user for an attrition model.",
            "Will this person keep using our services in the coming weeks?",
            "Represent this customer for estimating the risk that they go silent next month.",
            "Which users will disengage soon? Represent this one accordingly.",
        ),
    ),
    InstructionFamily(
        "travel",
        "future",
        (
            "Represent this user for a travel coupon campaign.",
            "Will this user spend on travel next month?",
            "Embed the user for travel marketing.",
            "Represent the user to find people planning a trip.",
            "How likely is this user to book flights or hotels soon?",
            "User representation for predicting travel spending.",
            "Is this customer going to travel in the coming month?",
            "Represent this user for targeting travel offers.",
            "Encode the user for an airline and hotel promotion.",
            "Would this user respond to a discount on trips?",
            "Represent this person for forecasting whether they will pay for travel within a month.",
            "Which users are about to go on a journey? Represent this one accordingly.",
        ),
    ),
    InstructionFamily(
        "next_category",
        "future",
        (
            "Represent this user for predicting their main spending category next month.",
            "What will this user spend the most money on next month?",
            "Embed the user for category-level recommendation.",
            "Represent the user to forecast where their spending goes.",
            "Which merchant category will dominate this user's payments soon?",
            "User representation for next-category prediction.",
            "Where is this customer going to spend in the coming weeks?",
            "Represent this user for recommending shopping categories.",
            "Encode the user for predicting their future spending mix.",
            "What kind of purchases will this user make next?",
            "Represent this person for estimating which category will take most of their budget next month.",
            "Which spending area will this customer favour shortly? Represent them accordingly.",
        ),
    ),
    InstructionFamily(
        "next_miniprogram",
        "future",
        (
            "Represent this user for predicting the next mini program they open.",
            "Which mini programs will this user open next?",
            "Embed the user for mini-program recommendation.",
            "Represent the user to recommend mini programs.",
            "What mini app is this user going to use soon?",
            "User representation for next mini-program prediction.",
            "Which services inside the app will this customer open in the coming days?",
            "Represent this user for ranking mini programs.",
            "Encode the user for a mini-program recommender.",
            "What will this user open next among mini programs?",
            "Represent this person for guessing the first mini program they will launch next month.",
            "Which in-app programs will attract this customer soon? Represent them accordingly.",
        ),
    ),
    InstructionFamily(
        "future_search",
        "future",
        (
            "Represent this user for predicting what they will search for.",
            "What will this user search for next month?",
            "Embed the user for query suggestion.",
            "Represent the user to anticipate their search intent.",
            "Which topics will this user look up soon?",
            "User representation for search personalization.",
            "What is this customer going to type into the search box?",
            "Represent this user for predicting future queries.",
            "Encode the user for search recommendation.",
            "What information will this user seek in the coming weeks?",
            "Represent this person for forecasting the subjects of their next searches.",
            "Which queries will this customer issue shortly? Represent them accordingly.",
        ),
    ),
    InstructionFamily(
        "top_categories",
        "stable",
        (
            "Represent this user by their main spending categories.",
            "What does this user mostly spend money on?",
            "Embed the user for describing their spending habits.",
            "Represent the user's consumption preferences.",
            "Which categories dominate this user's payments?",
            "User representation for spending-profile segmentation.",
            "What kind of merchants does this customer pay most often?",
            "Represent this user by what they usually buy.",
            "Encode the user's purchase interests.",
            "Where does this user's money usually go?",
            "Represent this person by the merchant categories they pay at most frequently.",
            "Summarise this customer's habitual spending areas in the representation.",
        ),
    ),
    InstructionFamily(
        "spending_level",
        "stable",
        (
            "Represent this user by how much they typically spend.",
            "How much does this user usually pay per transaction?",
            "Embed the user for spending-power estimation.",
            "Represent the user's typical payment amounts.",
            "Is this user a big or a small spender?",
            "User representation for estimating purchasing power.",
            "What is the usual size of this customer's payments?",
            "Represent this user for a premium-versus-budget segmentation.",
            "Encode the user's spending level.",
            "How large are this user's purchases?",
            "Represent this person by the amounts they usually pay and their largest recent payment.",
            "Summarise how much money this customer tends to spend in the representation.",
        ),
    ),
    InstructionFamily(
        "activity_rhythm",
        "stable",
        (
            "Represent this user by when and how often they are active.",
            "When is this user usually active?",
            "Embed the user for timing notifications.",
            "Represent the user's activity rhythm.",
            "How frequently does this user use the app?",
            "User representation for send-time optimisation.",
            "At what times of the week is this customer most engaged?",
            "Represent this user by their usage frequency.",
            "Encode the user's daily and weekly habits.",
            "Is this user active on weekdays or weekends?",
            "Represent this person by the time of day and week they usually interact with us.",
            "Summarise how regularly this customer engages in the representation.",
        ),
    ),
    InstructionFamily(
        "app_usage",
        "stable",
        (
            "Represent this user by the apps they spend time in.",
            "Which apps does this user use the most?",
            "Embed the user for app-usage segmentation.",
            "Represent the user's favourite apps.",
            "Where does this user spend their screen time?",
            "User representation for app recommendation.",
            "What applications does this customer rely on?",
            "Represent this user by their app habits.",
            "Encode the user's mobile app preferences.",
            "Which apps keep this user busy?",
            "Represent this person by the applications where they spend the most minutes.",
            "Summarise this customer's favourite applications in the representation.",
        ),
    ),
    InstructionFamily(
        "profile_facts",
        "stable",
        (
            "Represent this user by their demographic profile.",
            "Who is this user?",
            "Embed the user for demographic segmentation.",
            "Represent the user's age, occupation and city.",
            "Describe this user's background.",
            "User representation for profile-based targeting.",
            "What kind of person is this customer?",
            "Represent this user by their personal facts.",
            "Encode the user's demographics.",
            "Tell me about this user's life situation.",
            "Represent this person by their age, job, city tier and account history.",
            "Summarise who this customer is in the representation.",
        ),
    ),
    InstructionFamily(
        "insurance_interest",
        "future",
        (
            "Represent this user for predicting interest in insurance products.",
            "Will this user look at insurance next month?",
            "Embed the user for insurance marketing.",
            "Represent the user to find people who want an insurance policy.",
        ),
    ),
    # Demographic tasks of the MovieLens evaluation (training/movielens.py): held out, so always zero-shot.
    # They get their own families rather than `profile_facts`, whose one canonical phrasing cannot tell the
    # two tasks apart (the instruction-awareness matrix would have two identical columns).
    InstructionFamily(
        "gender",
        "stable",
        (
            "Represent this user for predicting their gender.",
            "Is this user a woman or a man?",
            "Embed the user for gender-based audience segmentation.",
            "Represent the user to estimate whether they are female.",
        ),
    ),
    InstructionFamily(
        "age",
        "stable",
        (
            "Represent this user for predicting their age group.",
            "Is this user young or middle-aged?",
            "Embed the user for age-based audience segmentation.",
            "Represent the user to estimate how old they are.",
        ),
    ),
)

FAMILY_BY_NAME: dict[str, InstructionFamily] = {f.name: f for f in FAMILIES}
# Families never used to build UserQA: their tasks are zero-shot.
HELD_OUT_FAMILIES: frozenset[str] = frozenset({"insurance_interest", "gender", "age"})
# The general embedding is trained with an empty instruction on a summary answer.
GENERAL_FAMILY = "general"

# Evaluation task -> the family whose instructions embed it.
TASK_FAMILY: dict[str, str] = {
    "fund_purchase": "fund_purchase",
    "churn": "churn",
    "travel_coupon": "travel",
    "insurance_interest": "insurance_interest",
    "next_category": "next_category",
    "next_miniprogram": "next_miniprogram",
    # MovieLens tasks (training/movielens.py): rated movies are `bill` items, genres their categories.
    "gender": "gender",
    "age_bracket": "age",
    "next_genre": "next_category",
}


def task_instructions(task: str) -> dict[str, list[str]]:
    """The instructions of an evaluation task: {"canonical": [one], "unseen": [held-out paraphrases]}."""
    family = FAMILY_BY_NAME[TASK_FAMILY[task]]
    if family.name in HELD_OUT_FAMILIES:
        return {"canonical": [family.canonical], "unseen": list(family.paraphrases[1:])}
    return {"canonical": [family.canonical], "unseen": list(family.held_out_paraphrases)}
