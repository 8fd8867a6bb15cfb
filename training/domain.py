"""The closed domain the embedded default knows: question/answer pairs and sounds it must ignore.

Answers are single sentences without commas, so the runtime's segmenter gives one speech segment
per answer; words are spelled the way pocketsphinx's US dictionary spells them ("color").
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_ROLE = "You are a helpful assistant."


@dataclass(frozen=True)
class QA:
    """One question and the one answer the model gives to it."""

    question: str
    answer: str


_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

PAIRS: list[QA] = [
    # greetings and the assistant itself
    QA("Hello.", "Hello and welcome."),
    QA("Good morning.", "Good morning to you too."),
    QA("Good night.", "Good night and sleep well."),
    QA("How are you?", "I am fine thank you."),
    QA("What is your name?", "My name is Robin."),
    QA("Thank you.", "You are welcome."),
    QA("Goodbye.", "Goodbye and have a nice day."),
    QA("Who made you?", "I was trained on a small computer."),
    QA("What can you do?", "I can answer simple questions about numbers colors and days."),
    QA("Can you hear me?", "Yes I can hear you."),
    QA("Are you a robot?", "Yes I am a small voice robot."),
    # small arithmetic
    QA("What is one plus one?", "One plus one is two."),
    QA("What is two plus two?", "Two plus two is four."),
    QA("What is three plus four?", "Three plus four is seven."),
    QA("What is five plus five?", "Five plus five is ten."),
    QA("What is six plus three?", "Six plus three is nine."),
    QA("What is two plus six?", "Two plus six is eight."),
    QA("What is four plus one?", "Four plus one is five."),
    QA("What is nine minus four?", "Nine minus four is five."),
    QA("What is ten minus three?", "Ten minus three is seven."),
    QA("What is eight minus six?", "Eight minus six is two."),
    QA("What is seven minus one?", "Seven minus one is six."),
    QA("What is two times three?", "Two times three is six."),
    QA("What is four times two?", "Four times two is eight."),
    QA("What is three times three?", "Three times three is nine."),
    QA("What is five times two?", "Five times two is ten."),
    QA("What is ten divided by two?", "Ten divided by two is five."),
    # colors
    QA("What color is the sky?", "The sky is blue."),
    QA("What color is grass?", "Grass is green."),
    QA("What color is snow?", "Snow is white."),
    QA("What color is a banana?", "A banana is yellow."),
    QA("What color is coal?", "Coal is black."),
    QA("What color is a tomato?", "A tomato is red."),
    QA("What color is an orange?", "An orange is orange."),
    QA("What color is the sun?", "The sun is yellow."),
    QA("What do blue and yellow make?", "Blue and yellow make green."),
    QA("What is your favorite color?", "My favorite color is blue."),
    # days
    *[
        QA(f"What day comes after {day}?", f"{_DAYS[(i + 1) % 7]} comes after {day}.")
        for i, day in enumerate(_DAYS)
    ],
    QA("How many days are in a week?", "There are seven days in a week."),
    QA("What is the first day of the week?", "The first day of the week is Monday."),
    QA("Which days are the weekend?", "Saturday and Sunday are the weekend."),
    # a few more facts
    QA("How many legs does a dog have?", "A dog has four legs."),
    QA("How many months are in a year?", "There are twelve months in a year."),
    QA("How many hours are in a day?", "There are twenty four hours in a day."),
]

BACKCHANNELS: list[str] = ["Mhm.", "Yeah.", "Uh huh.", "Okay.", "Right.", "Hmm.", "Oh.", "I see."]
"""Short sounds a listener makes while someone else talks: the model must not answer them."""

# Voices and prosody. Questions are spoken by many voices; test recordings use speeds and pitches
# from the held-out lists (never used in training) and fresh noise seeds.
ANSWER_VOICE = ("en-us", 160, 50)
"""(voice, words per minute, pitch) of every spoken answer: the codec's single voice."""

QUESTION_VOICES = [
    f"{base}+{variant}"
    for base in ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
    for variant in ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2")
]
TRAIN_SPEEDS = [130, 140, 150, 160, 170, 180, 190]
TRAIN_PITCHES = [30, 38, 46, 54, 62, 70]
HELD_OUT_SPEEDS = [145, 165, 176]
HELD_OUT_PITCHES = [42, 50, 58, 66]


def answers() -> list[str]:
    return [pair.answer for pair in PAIRS]


def domain_corpus() -> str:
    """Text covering every word the model reads or says, for the tokenizer."""
    lines = [SYSTEM_ROLE, *[p.question for p in PAIRS], *[p.answer for p in PAIRS], *BACKCHANNELS]
    lines += [SORRY, *TRAIN_GREETINGS, *OUT_OF_DOMAIN_TRAIN]
    return "\n".join(lines)


# What it says to speech that is none of the questions above (issue 19: a way to say no). Unlike
# the answers it has commas: the server's segmenter cuts it into three segments ("Sorry," / ...).
SORRY = "Sorry, I only know a few questions. Ask me what I can do."

GREETING_PAIR = 0
"""Other greetings get the answer of "Hello." instead of being taken for a backchannel."""
TRAIN_GREETINGS = ["Hello world.", "Hi.", "Hi there.", "Hello there.", "Hey there.", "Hello everybody."]

_PLACES = ["France", "Spain", "Japan", "Canada", "Brazil", "Egypt", "India", "Italy", "Mexico", "Kenya"]
_TOPICS = ["music", "football", "cooking", "history", "the moon", "dinosaurs", "cars", "movies", "trains"]
_OOD_FIXED = [
    "Tell me a joke.",
    "What time is it?",
    "Play some music.",
    "What is the weather like today?",
    "Turn on the lights.",
    "Open the window please.",
    "Where do you live?",
    "Can you sing a song for me?",
    "Set an alarm for seven.",
    "Who won the game last night?",
    "How tall is the highest mountain?",
    "Call my mother.",
    "I would like to order a pizza.",
    "Where is the nearest train station?",
    "Read me the news.",
    "What is the meaning of life?",
    "How do I bake bread?",
    "Book a table for two people.",
    "Send a message to John.",
    "What is the speed of light?",
    "I lost my keys again.",
    "The train was late this morning.",
    "My brother is coming to visit next week.",
    "Please remind me to buy milk.",
    "How far away is the moon?",
    "What should I cook for dinner?",
    "Do you like cats or dogs?",
    "Translate this into German.",
    "What is the population of London?",
    "Why is the ocean salty?",
]
OUT_OF_DOMAIN_TRAIN: list[str] = [
    *_OOD_FIXED,
    *[f"What is the capital of {place}?" for place in _PLACES],
    *[f"Tell me something about {topic}." for topic in _TOPICS],
    *[f"Do you know anything about {topic}?" for topic in _TOPICS],
    *[f"How far is it to {place}?" for place in _PLACES[:5]],
]
"""Speech that is not one of the questions: answered with SORRY. The held-out list is in
`training.heldout_eval` and shares no sentence with this one."""

LONG_SENTENCES_TRAIN: list[str] = [
    "I went to the market yesterday and bought some apples and a loaf of bread for the week.",
    "When we arrived at the station the train had already left so we waited for the next one.",
    "My grandmother used to tell us long stories about the village where she grew up.",
    "The children played in the garden all afternoon while their parents talked in the kitchen.",
    "After the meeting we walked along the river and talked about our plans for the summer.",
    "If it rains again tomorrow we will have to move the party inside the old barn.",
    "She told me that the new library will open next month right next to the park.",
    "We painted the fence on Saturday and then we cleaned the whole house on Sunday.",
]
"""Long out-of-domain sentences, heard with pauses between words: the head must wait for the end."""
