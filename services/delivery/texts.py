"""What delivery says to recipients, in their language: the recipient pages and the footer it adds to marketing
email (English, French and German)."""

from typing import Any

TEXTS: dict[str, dict[str, str]] = {
    "en": {"title": "Email preferences", "unsub_q": "Unsubscribe {address} from marketing email?",
           "unsub_btn": "Unsubscribe", "unsub_done": "{address} is unsubscribed from marketing email.",
           "topics": "Send me email about", "all_off": "Unsubscribe from all marketing email",
           "save": "Save preferences", "saved": "Your preferences are saved.",
           "manage": "Manage your email preferences", "invalid": "This link is not valid.",
           "gone": "This link is no longer valid.",
           "erased": "No need to unsubscribe: the data this email was sent with has been erased, and nothing "
                     "more will be sent with it.",
           "confirm_q": "Confirm that {address} wants our email?", "confirm_btn": "Yes, subscribe me",
           "confirm_done": "Thank you: {address} is subscribed.", "confirm_subject": "Please confirm your subscription",
           "confirm_body": "Confirm that you want our email: {url}\nIf you did not ask for it, ignore this message.",
           "confirm_erased": "This confirmation link can no longer be used: the data this email was sent with has "
                             "been erased, and nothing has been subscribed. To get our email, sign up again.",
           "blocked_complaint": "We send no email to {address}: our email to it was reported as spam. This page "
                                "cannot change that.",
           "blocked_hard_bounce": "We send no email to {address}: our email to it bounced (the address could not "
                                  "be reached). This page cannot change that.",
           "blocked_manual": "We send no marketing email to {address}: we stopped it for this address. This page "
                             "cannot change that.",
           "blocked_contact": "To get our email again, write to us at {contact}.",
           "blocked_saved": "Your topic choices are kept, but they take effect only if this block is lifted. "
                            "Nothing else has changed."},
    "fr": {"title": "Préférences e-mail", "unsub_q": "Désinscrire {address} des e-mails marketing ?",
           "unsub_btn": "Se désinscrire", "unsub_done": "{address} est désinscrit des e-mails marketing.",
           "topics": "M'envoyer des e-mails sur", "all_off": "Me désinscrire de tous les e-mails marketing",
           "save": "Enregistrer", "saved": "Vos préférences sont enregistrées.",
           "manage": "Gérer vos préférences e-mail", "invalid": "Ce lien n'est pas valide.",
           "gone": "Ce lien n'est plus valide.",
           "erased": "Inutile de vous désinscrire : les données avec lesquelles cet e-mail a été envoyé ont été "
                     "effacées, et plus rien ne sera envoyé avec elles.",
           "confirm_q": "Confirmer que {address} souhaite recevoir nos e-mails ?", "confirm_btn": "Oui, je m'inscris",
           "confirm_done": "Merci : {address} est inscrit.", "confirm_subject": "Confirmez votre inscription",
           "confirm_body": "Confirmez que vous souhaitez recevoir nos e-mails : {url}\nSi vous ne l'avez pas "
                           "demandé, ignorez ce message.",
           "confirm_erased": "Ce lien de confirmation ne peut plus être utilisé : les données avec lesquelles cet "
                             "e-mail a été envoyé ont été effacées, et aucune inscription n'a été enregistrée. Pour "
                             "recevoir nos e-mails, inscrivez-vous à nouveau.",
           "blocked_complaint": "Nous n'envoyons aucun e-mail à {address} : notre e-mail à cette adresse a été "
                                "signalé comme spam. Cette page ne peut pas changer cela.",
           "blocked_hard_bounce": "Nous n'envoyons aucun e-mail à {address} : notre e-mail à cette adresse n'a pas "
                                  "pu être remis (adresse injoignable). Cette page ne peut pas changer cela.",
           "blocked_manual": "Nous n'envoyons aucun e-mail marketing à {address} : nous l'avons arrêté pour cette "
                             "adresse. Cette page ne peut pas changer cela.",
           "blocked_contact": "Pour recevoir à nouveau nos e-mails, écrivez-nous à {contact}.",
           "blocked_saved": "Vos choix de thèmes sont conservés, mais ne s'appliqueront que si ce blocage est levé. "
                            "Rien d'autre n'a changé."},
    "de": {"title": "E-Mail-Einstellungen", "unsub_q": "{address} von Marketing-E-Mails abmelden?",
           "unsub_btn": "Abmelden", "unsub_done": "{address} ist von Marketing-E-Mails abgemeldet.",
           "topics": "Schickt mir E-Mails über", "all_off": "Von allen Marketing-E-Mails abmelden",
           "save": "Einstellungen speichern", "saved": "Deine Einstellungen sind gespeichert.",
           "manage": "E-Mail-Einstellungen verwalten", "invalid": "Dieser Link ist nicht gültig.",
           "gone": "Dieser Link ist nicht mehr gültig.",
           "erased": "Eine Abmeldung ist nicht nötig: Die Daten, mit denen diese E-Mail verschickt wurde, sind "
                     "gelöscht, und mit ihnen wird nichts mehr verschickt.",
           "confirm_q": "Bestätigen, dass {address} unsere E-Mails erhalten möchte?", "confirm_btn": "Ja, anmelden",
           "confirm_done": "Danke: {address} ist angemeldet.", "confirm_subject": "Bitte bestätige deine Anmeldung",
           "confirm_body": "Bestätige, dass du unsere E-Mails erhalten möchtest: {url}\nWenn du das nicht "
                           "angefordert hast, ignoriere diese Nachricht.",
           "confirm_erased": "Dieser Bestätigungslink kann nicht mehr verwendet werden: Die Daten, mit denen diese "
                             "E-Mail verschickt wurde, sind gelöscht, und es wurde nichts angemeldet. Um unsere "
                             "E-Mails zu erhalten, melde dich erneut an.",
           "blocked_complaint": "Wir schicken keine E-Mails an {address}: Unsere E-Mail an diese Adresse wurde als "
                                "Spam gemeldet. Diese Seite kann das nicht ändern.",
           "blocked_hard_bounce": "Wir schicken keine E-Mails an {address}: Unsere E-Mail an diese Adresse kam "
                                  "zurück (die Adresse ist nicht erreichbar). Diese Seite kann das nicht ändern.",
           "blocked_manual": "Wir schicken keine Marketing-E-Mails an {address}: Wir haben sie für diese Adresse "
                             "gestoppt. Diese Seite kann das nicht ändern.",
           "blocked_contact": "Um unsere E-Mails wieder zu erhalten, schreib uns an {contact}.",
           "blocked_saved": "Deine Themenauswahl ist gespeichert, gilt aber erst, wenn diese Sperre aufgehoben wird. "
                            "Sonst hat sich nichts geändert."},
}


def language_of(locale: Any) -> str | None:
    """The language of ``TEXTS`` a locale speaks (``fr-CA`` → ``fr``), or None."""
    if not isinstance(locale, str):
        return None
    code = locale.strip().lower().replace("_", "-").split("-")[0]
    return code if code in TEXTS else None


def page_language(locale: Any) -> str:
    """The language of ``TEXTS`` closest to a locale: its own (``fr-CA``, ``fr_FR`` → ``fr``), else English."""
    return language_of(locale) or "en"
