//! docTR's vocabularies (`doctr/datasets/vocabs.py`, 1.1.0): the order defines class indices.

const DIGITS: &str = "0123456789";
const ASCII_LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const CURRENCY: &str = "£€¥¢฿";

/// A named docTR vocabulary, or None if Kiln does not know the name.
pub fn named(name: &str) -> Option<String> {
    let latin = format!("{DIGITS}{ASCII_LETTERS}{PUNCTUATION}");
    Some(match name {
        "digits" => DIGITS.into(),
        "ascii_letters" => ASCII_LETTERS.into(),
        "punctuation" => PUNCTUATION.into(),
        "latin" => latin,
        "english" => format!("{latin}°{CURRENCY}"),
        "french" => format!("{latin}°{CURRENCY}àâéèêëîïôùûüçÀÂÉÈÊËÎÏÔÙÛÜÇ"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn french_matches_doctr() {
        // docTR 1.1.0: len(VOCABS["french"]) == 126, starting with digits, ending with "Ç".
        let v = super::named("french").unwrap();
        assert_eq!(v.chars().count(), 126);
        assert!(v.starts_with("0123456789abc"));
        assert!(v.ends_with("ÙÛÜÇ"));
    }
}
