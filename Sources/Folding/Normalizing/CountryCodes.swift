/// ISO 3166-1 alpha-2 codes by English country name (the ISO short names, common
/// forms, and a few everyday aliases), for deriving `location.countryCode` when only a
/// country name is known. Matching ignores case, diacritics and punctuation.
public enum CountryCodes {
    /// The alpha-2 code for a country name, or for a value that already is a code.
    public static func code(for country: String) -> String? {
        let key = normalize(country)
        if key.isEmpty { return nil }
        if let c = byName[key] { return c }
        if key.count == 2, codes.contains(key.uppercased()) { return key.uppercased() }
        if key.count == 3, let c = alpha3[key.uppercased()] { return c }
        return nil
    }

    /// Lower case, ASCII letters only, single spaces; "&" reads "and"; "The" dropped.
    static func normalize(_ s: String) -> String {
        var out = ""
        var lastSpace = true
        for scalar in NameFitter.fit(s.split(separator: "&", omittingEmptySubsequences: false).joined(separator: " and ")).lowercased()
            .unicodeScalars
        {
            switch scalar {
            case "a"..."z":
                out.unicodeScalars.append(scalar)
                lastSpace = false
            default:
                if !lastSpace { out.append(" ") }
                lastSpace = true
            }
        }
        while out.hasSuffix(" ") { out.removeLast() }
        if out.hasPrefix("the ") { out.removeFirst(4) }
        return out
    }

    static let codes: Set<String> = Set(table.map(\.1))

    static let byName: [String: String] = {
        var m: [String: String] = [:]
        for (names, code) in table {
            for n in names.split(separator: "|") { m[normalize(String(n))] = code }
        }
        return m
    }()

    static let alpha3: [String: String] = [
        "USA": "US", "GBR": "GB", "DEU": "DE", "FRA": "FR", "ESP": "ES", "ITA": "IT", "NLD": "NL", "BEL": "BE",
        "CHE": "CH", "AUT": "AT", "SWE": "SE", "NOR": "NO", "DNK": "DK", "FIN": "FI", "POL": "PL", "PRT": "PT",
        "IRL": "IE", "CAN": "CA", "MEX": "MX", "BRA": "BR", "ARG": "AR", "AUS": "AU", "NZL": "NZ", "JPN": "JP",
        "CHN": "CN", "IND": "IN", "ISR": "IL", "ZAF": "ZA", "KOR": "KR", "SGP": "SG", "RUS": "RU", "UKR": "UA",
        "TUR": "TR", "ARE": "AE", "SAU": "SA", "EGY": "EG", "NGA": "NG", "KEN": "KE", "CZE": "CZ", "HUN": "HU",
        "ROU": "RO", "GRC": "GR", "CHL": "CL", "COL": "CO", "PER": "PE", "IDN": "ID", "THA": "TH", "VNM": "VN",
        "PHL": "PH", "MYS": "MY", "PAK": "PK", "BGD": "BD", "TWN": "TW", "HKG": "HK",
    ]

    /// Names (|-separated) and codes.
    static let table: [(String, String)] = [
        ("Afghanistan", "AF"), ("Aland Islands|Åland Islands", "AX"), ("Albania", "AL"), ("Algeria", "DZ"),
        ("American Samoa", "AS"), ("Andorra", "AD"), ("Angola", "AO"), ("Anguilla", "AI"), ("Antarctica", "AQ"),
        ("Antigua and Barbuda", "AG"), ("Argentina", "AR"), ("Armenia", "AM"), ("Aruba", "AW"), ("Australia", "AU"),
        ("Austria", "AT"), ("Azerbaijan", "AZ"), ("Bahamas", "BS"), ("Bahrain", "BH"), ("Bangladesh", "BD"),
        ("Barbados", "BB"), ("Belarus", "BY"), ("Belgium", "BE"), ("Belize", "BZ"), ("Benin", "BJ"), ("Bermuda", "BM"),
        ("Bhutan", "BT"), ("Bolivia|Bolivia (Plurinational State of)|Plurinational State of Bolivia", "BO"),
        ("Bonaire, Sint Eustatius and Saba|Caribbean Netherlands", "BQ"), ("Bosnia and Herzegovina|Bosnia", "BA"),
        ("Botswana", "BW"), ("Bouvet Island", "BV"), ("Brazil|Brasil", "BR"), ("British Indian Ocean Territory", "IO"),
        ("Brunei Darussalam|Brunei", "BN"), ("Bulgaria", "BG"), ("Burkina Faso", "BF"), ("Burundi", "BI"),
        ("Cabo Verde|Cape Verde", "CV"), ("Cambodia", "KH"), ("Cameroon", "CM"), ("Canada", "CA"),
        ("Cayman Islands", "KY"), ("Central African Republic", "CF"), ("Chad", "TD"), ("Chile", "CL"),
        ("China|People's Republic of China|PRC", "CN"), ("Christmas Island", "CX"), ("Cocos (Keeling) Islands|Cocos Islands", "CC"),
        ("Colombia", "CO"), ("Comoros", "KM"), ("Congo|Republic of the Congo|Congo-Brazzaville", "CG"),
        ("Congo, Democratic Republic of the|Democratic Republic of the Congo|DR Congo|DRC|Congo-Kinshasa", "CD"),
        ("Cook Islands", "CK"), ("Costa Rica", "CR"), ("Cote d'Ivoire|Côte d'Ivoire|Ivory Coast", "CI"), ("Croatia", "HR"),
        ("Cuba", "CU"), ("Curacao|Curaçao", "CW"), ("Cyprus", "CY"), ("Czechia|Czech Republic", "CZ"), ("Denmark", "DK"),
        ("Djibouti", "DJ"), ("Dominica", "DM"), ("Dominican Republic", "DO"), ("Ecuador", "EC"), ("Egypt", "EG"),
        ("El Salvador", "SV"), ("Equatorial Guinea", "GQ"), ("Eritrea", "ER"), ("Estonia", "EE"), ("Eswatini|Swaziland", "SZ"),
        ("Ethiopia", "ET"), ("Falkland Islands (Malvinas)|Falkland Islands", "FK"), ("Faroe Islands", "FO"), ("Fiji", "FJ"),
        ("Finland", "FI"), ("France", "FR"), ("French Guiana", "GF"), ("French Polynesia", "PF"),
        ("French Southern Territories", "TF"), ("Gabon", "GA"), ("Gambia", "GM"), ("Georgia", "GE"),
        ("Germany|Deutschland", "DE"), ("Ghana", "GH"), ("Gibraltar", "GI"), ("Greece", "GR"), ("Greenland", "GL"),
        ("Grenada", "GD"), ("Guadeloupe", "GP"), ("Guam", "GU"), ("Guatemala", "GT"), ("Guernsey", "GG"), ("Guinea", "GN"),
        ("Guinea-Bissau", "GW"), ("Guyana", "GY"), ("Haiti", "HT"), ("Heard Island and McDonald Islands", "HM"),
        ("Holy See|Vatican City|Vatican", "VA"), ("Honduras", "HN"), ("Hong Kong", "HK"), ("Hungary", "HU"),
        ("Iceland", "IS"), ("India", "IN"), ("Indonesia", "ID"), ("Iran|Iran (Islamic Republic of)|Islamic Republic of Iran", "IR"),
        ("Iraq", "IQ"), ("Ireland|Republic of Ireland", "IE"), ("Isle of Man", "IM"), ("Israel", "IL"), ("Italy|Italia", "IT"),
        ("Jamaica", "JM"), ("Japan", "JP"), ("Jersey", "JE"), ("Jordan", "JO"), ("Kazakhstan", "KZ"), ("Kenya", "KE"),
        ("Kiribati", "KI"), ("Korea, Democratic People's Republic of|North Korea|Democratic People's Republic of Korea", "KP"),
        ("Korea, Republic of|South Korea|Republic of Korea|Korea", "KR"), ("Kosovo", "XK"), ("Kuwait", "KW"),
        ("Kyrgyzstan", "KG"), ("Lao People's Democratic Republic|Laos", "LA"), ("Latvia", "LV"), ("Lebanon", "LB"),
        ("Lesotho", "LS"), ("Liberia", "LR"), ("Libya", "LY"), ("Liechtenstein", "LI"), ("Lithuania", "LT"),
        ("Luxembourg", "LU"), ("Macao|Macau", "MO"), ("Madagascar", "MG"), ("Malawi", "MW"), ("Malaysia", "MY"),
        ("Maldives", "MV"), ("Mali", "ML"), ("Malta", "MT"), ("Marshall Islands", "MH"), ("Martinique", "MQ"),
        ("Mauritania", "MR"), ("Mauritius", "MU"), ("Mayotte", "YT"), ("Mexico|México", "MX"),
        ("Micronesia|Micronesia (Federated States of)|Federated States of Micronesia", "FM"),
        ("Moldova|Moldova, Republic of|Republic of Moldova", "MD"), ("Monaco", "MC"), ("Mongolia", "MN"),
        ("Montenegro", "ME"), ("Montserrat", "MS"), ("Morocco", "MA"), ("Mozambique", "MZ"), ("Myanmar|Burma", "MM"),
        ("Namibia", "NA"), ("Nauru", "NR"), ("Nepal", "NP"), ("Netherlands|Holland|The Netherlands|Nederland", "NL"),
        ("New Caledonia", "NC"), ("New Zealand", "NZ"), ("Nicaragua", "NI"), ("Niger", "NE"), ("Nigeria", "NG"),
        ("Niue", "NU"), ("Norfolk Island", "NF"), ("North Macedonia|Macedonia", "MK"), ("Northern Mariana Islands", "MP"),
        ("Norway", "NO"), ("Oman", "OM"), ("Pakistan", "PK"), ("Palau", "PW"),
        ("Palestine|Palestine, State of|State of Palestine|Palestinian Territories", "PS"), ("Panama", "PA"),
        ("Papua New Guinea", "PG"), ("Paraguay", "PY"), ("Peru", "PE"), ("Philippines", "PH"), ("Pitcairn|Pitcairn Islands", "PN"),
        ("Poland|Polska", "PL"), ("Portugal", "PT"), ("Puerto Rico", "PR"), ("Qatar", "QA"), ("Reunion|Réunion", "RE"),
        ("Romania", "RO"), ("Russian Federation|Russia", "RU"), ("Rwanda", "RW"),
        ("Saint Barthelemy|Saint Barthélemy", "BL"), ("Saint Helena, Ascension and Tristan da Cunha|Saint Helena", "SH"),
        ("Saint Kitts and Nevis", "KN"), ("Saint Lucia", "LC"), ("Saint Martin (French part)|Saint Martin", "MF"),
        ("Saint Pierre and Miquelon", "PM"), ("Saint Vincent and the Grenadines", "VC"), ("Samoa", "WS"),
        ("San Marino", "SM"), ("Sao Tome and Principe|São Tomé and Príncipe", "ST"), ("Saudi Arabia", "SA"),
        ("Senegal", "SN"), ("Serbia", "RS"), ("Seychelles", "SC"), ("Sierra Leone", "SL"), ("Singapore", "SG"),
        ("Sint Maarten (Dutch part)|Sint Maarten", "SX"), ("Slovakia", "SK"), ("Slovenia", "SI"), ("Solomon Islands", "SB"),
        ("Somalia", "SO"), ("South Africa", "ZA"), ("South Georgia and the South Sandwich Islands", "GS"),
        ("South Sudan", "SS"), ("Spain|España", "ES"), ("Sri Lanka", "LK"), ("Sudan", "SD"), ("Suriname", "SR"),
        ("Svalbard and Jan Mayen", "SJ"), ("Sweden|Sverige", "SE"), ("Switzerland|Schweiz|Suisse", "CH"),
        ("Syrian Arab Republic|Syria", "SY"), ("Taiwan|Taiwan, Province of China", "TW"), ("Tajikistan", "TJ"),
        ("Tanzania|Tanzania, United Republic of|United Republic of Tanzania", "TZ"), ("Thailand", "TH"),
        ("Timor-Leste|East Timor", "TL"), ("Togo", "TG"), ("Tokelau", "TK"), ("Tonga", "TO"), ("Trinidad and Tobago", "TT"),
        ("Tunisia", "TN"), ("Turkey|Türkiye|Turkiye", "TR"), ("Turkmenistan", "TM"), ("Turks and Caicos Islands", "TC"),
        ("Tuvalu", "TV"), ("Uganda", "UG"), ("Ukraine", "UA"), ("United Arab Emirates|UAE", "AE"),
        (
            "United Kingdom|United Kingdom of Great Britain and Northern Ireland|UK|Great Britain|Britain|England|Scotland|Wales|Northern Ireland",
            "GB"
        ),
        ("United States|United States of America|USA|US|U.S.|U.S.A.|America", "US"),
        ("United States Minor Outlying Islands", "UM"), ("Uruguay", "UY"), ("Uzbekistan", "UZ"), ("Vanuatu", "VU"),
        ("Venezuela|Venezuela (Bolivarian Republic of)", "VE"), ("Viet Nam|Vietnam", "VN"),
        ("Virgin Islands (British)|British Virgin Islands", "VG"), ("Virgin Islands (U.S.)|US Virgin Islands|U.S. Virgin Islands", "VI"),
        ("Wallis and Futuna", "WF"), ("Western Sahara", "EH"), ("Yemen", "YE"), ("Zambia", "ZM"), ("Zimbabwe", "ZW"),
    ]
}
