//! The hosted connect page's words, in English and German. `{project}` and `{provider}` are
//! filled in by the page.

use crate::connect_sessions::Locale;

pub struct Texts {
    pub lang: &'static str,
    pub title: &'static str,
    pub intro: &'static str,
    pub connected: &'static str,
    pub not_connected: &'static str,
    pub connect: &'static str,
    pub disconnect: &'static str,
    pub try_again: &'static str,
    pub done: &'static str,
    pub none_available: &'static str,
    pub revoke_note: &'static str,
    pub result_connected: &'static str,
    pub result_disconnected: &'static str,
    pub result_failed: &'static str,
    pub reason_declined: &'static str,
    pub reason_provider: &'static str,
    pub reason_unavailable: &'static str,
    pub reason_ours: &'static str,
    pub done_title: &'static str,
    pub done_message: &'static str,
    pub not_found_title: &'static str,
    pub not_found_message: &'static str,
    pub gone_title: &'static str,
    pub gone_message: &'static str,
    pub refused_title: &'static str,
    pub refused_message: &'static str,
    pub error_title: &'static str,
    pub error_message: &'static str,
}

const EN: Texts = Texts {
    lang: "en",
    title: "Connect your accounts",
    intro: "{project} asks to receive data from your fitness and health accounts. Connect the ones you want to share.",
    connected: "Connected",
    not_connected: "Not connected",
    connect: "Connect",
    disconnect: "Disconnect",
    try_again: "Try again",
    done: "Done",
    none_available: "No accounts can be connected at the moment.",
    revoke_note: "You can disconnect an account here at any time; it then stops sharing data.",
    result_connected: "{provider} is connected.",
    result_disconnected: "{provider} is disconnected and no longer shares data.",
    result_failed: "{provider} could not be connected.",
    reason_declined: "You did not allow access at {provider}. You can try again.",
    reason_provider: "{provider} did not complete the connection. Please try again.",
    reason_unavailable: "{provider} is not available at the moment.",
    reason_ours: "Something went wrong on our side. Please try again.",
    done_title: "All set",
    done_message: "You can close this window now.",
    not_found_title: "Link not found",
    not_found_message: "This link does not work. Please ask for a new one.",
    gone_title: "Link expired",
    gone_message: "This link has expired. Please ask for a new one.",
    refused_title: "Request refused",
    refused_message: "Please go back to the page and try again.",
    error_title: "Something went wrong",
    error_message: "Please try again in a moment.",
};

const DE: Texts = Texts {
    lang: "de",
    title: "Konten verbinden",
    intro: "{project} möchte Daten aus Ihren Fitness- und Gesundheitskonten erhalten. Verbinden Sie die Konten, die Sie teilen möchten.",
    connected: "Verbunden",
    not_connected: "Nicht verbunden",
    connect: "Verbinden",
    disconnect: "Trennen",
    try_again: "Erneut versuchen",
    done: "Fertig",
    none_available: "Im Moment können keine Konten verbunden werden.",
    revoke_note: "Sie können ein Konto hier jederzeit trennen; es teilt dann keine Daten mehr.",
    result_connected: "{provider} ist verbunden.",
    result_disconnected: "{provider} ist getrennt und teilt keine Daten mehr.",
    result_failed: "{provider} konnte nicht verbunden werden.",
    reason_declined: "Sie haben den Zugriff bei {provider} nicht erlaubt. Sie können es erneut versuchen.",
    reason_provider: "{provider} hat die Verbindung nicht abgeschlossen. Bitte versuchen Sie es erneut.",
    reason_unavailable: "{provider} ist im Moment nicht verfügbar.",
    reason_ours: "Bei uns ist ein Fehler aufgetreten. Bitte versuchen Sie es erneut.",
    done_title: "Fertig",
    done_message: "Sie können dieses Fenster jetzt schließen.",
    not_found_title: "Link nicht gefunden",
    not_found_message: "Dieser Link funktioniert nicht. Bitte fordern Sie einen neuen an.",
    gone_title: "Link abgelaufen",
    gone_message: "Dieser Link ist abgelaufen. Bitte fordern Sie einen neuen an.",
    refused_title: "Anfrage abgelehnt",
    refused_message: "Bitte kehren Sie zur Seite zurück und versuchen Sie es erneut.",
    error_title: "Etwas ist schiefgelaufen",
    error_message: "Bitte versuchen Sie es gleich noch einmal.",
};

pub fn texts(locale: Locale) -> &'static Texts {
    match locale {
        Locale::En => &EN,
        Locale::De => &DE,
    }
}

impl Texts {
    /// Why a connect failed, for a `connect::Failure` code; `None` for codes the page does not know.
    pub fn reason(&self, code: &str) -> Option<&'static str> {
        Some(match code {
            "access_denied" => self.reason_declined,
            "provider_error" | "invalid_request" | "token_exchange_failed" | "provider_registration_failed" => {
                self.reason_provider
            }
            "provider_disabled" | "credentials_missing" | "unavailable" => self.reason_unavailable,
            "server_error" | "session_ended" => self.reason_ours,
            _ => return None,
        })
    }
}
