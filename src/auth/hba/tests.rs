//! Tests of the pg_hba.conf parser and matcher.

use super::*;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

const SCRAM: Option<Method> = Some(Method::Auth(AuthType::ScramSha256));

#[test]
fn first_matching_line_wins() {
    let hba = Hba::parse(
        "# comment\n\
         local   all  all                 trust\n\
         host    secret  all  0.0.0.0/0   reject\n\
         host    all  boss    127.0.0.1/32 trust   # inline comment\n\
         hostssl all  all     ::1/128     cert\n\
         host    all,\"all\"  app,other  127.0.0.0 255.0.0.0  scram-sha-256\n\
         hostnossl sameuser all 10.0.0.0/8 md5\n",
    )
    .unwrap();
    let lo = ip("127.0.0.1");
    assert_eq!(hba.lookup(lo, false, "app", "secret"), Some(Method::Reject));
    assert_eq!(hba.lookup(lo, false, "boss", "db"), Some(Method::Auth(AuthType::Trust)));
    assert_eq!(hba.lookup(ip("127.1.2.3"), false, "other", "db"), SCRAM);
    assert_eq!(hba.lookup(ip("128.0.0.1"), false, "app", "db"), None);
    assert_eq!(hba.lookup(ip("::1"), true, "x", "db"), Some(Method::Auth(AuthType::Cert)));
    assert_eq!(hba.lookup(ip("::1"), false, "x", "db"), None);
    assert_eq!(hba.lookup(ip("10.1.1.1"), false, "u", "u"), Some(Method::Auth(AuthType::Md5)));
    assert_eq!(hba.lookup(ip("10.1.1.1"), true, "u", "u"), None);
    assert_eq!(hba.lookup(ip("10.1.1.1"), false, "u", "v"), None);
    // an IPv4 client seen through an IPv6 socket
    assert_eq!(hba.lookup(ip("::ffff:127.0.0.1"), false, "boss", "db"), Some(Method::Auth(AuthType::Trust)));
    assert!(hba.uses_cert());
    // a Unix-socket client matches the local line only
    assert_eq!(hba.lookup(None, false, "app", "secret"), Some(Method::Auth(AuthType::Trust)));
}

#[test]
fn unix_socket_clients_match_local_lines_only() {
    let hba = Hba::parse(
        "host all all all trust
hostnossl all all 0.0.0.0/0 trust
local db all md5
",
    )
    .unwrap();
    assert_eq!(hba.lookup(None, false, "u", "db"), Some(Method::Auth(AuthType::Md5)));
    // no local line for this database: refused, even though host lines match every address
    assert_eq!(hba.lookup(None, false, "u", "other"), None);
    assert_eq!(hba.lookup(ip("1.2.3.4"), false, "u", "db"), Some(Method::Auth(AuthType::Trust)));
    let tcp_only = Hba::parse(
        "host all all 0.0.0.0/0 trust
",
    )
    .unwrap();
    assert_eq!(tcp_only.lookup(None, false, "u", "db"), None);
}

#[test]
fn quoted_keywords_are_names_and_replication_never_matches() {
    let hba =
        Hba::parse("host \"all\" all all trust\nhost replication all all md5\nhost \"x,y\" all all reject\n").unwrap();
    assert_eq!(hba.lookup(ip("1.2.3.4"), false, "u", "all"), Some(Method::Auth(AuthType::Trust)));
    assert_eq!(hba.lookup(ip("1.2.3.4"), false, "u", "db"), None);
    assert_eq!(hba.lookup(ip("1.2.3.4"), false, "u", "x,y"), Some(Method::Reject));
}

#[test]
fn continuation_lines_and_masks() {
    let hba = Hba::parse("host all all \\\n  192.168.0.0/16 \\\n  trust\nhost all all 0.0.0.0/0 reject\n").unwrap();
    assert_eq!(hba.lookup(ip("192.168.9.9"), false, "u", "d"), Some(Method::Auth(AuthType::Trust)));
    assert_eq!(hba.lookup(ip("192.169.0.1"), false, "u", "d"), Some(Method::Reject));
    let v6 = Hba::parse("host all all fe80::/10 trust\nhost all all ::/0 reject\n").unwrap();
    assert_eq!(v6.lookup(ip("fe80::1"), false, "u", "d"), Some(Method::Auth(AuthType::Trust)));
    assert_eq!(v6.lookup(ip("2001::1"), false, "u", "d"), Some(Method::Reject));
    assert_eq!(v6.lookup(ip("1.2.3.4"), false, "u", "d"), None);
}

#[test]
fn every_bad_line_is_reported_with_its_number() {
    let text = "host all all 127.0.0.1/32 trust\n\
                host all +admins 127.0.0.1/32 trust\n\
                host all all db.example.com trust\n\
                host all all 127.0.0.1/32 password\n\
                host all all 127.0.0.1/33 trust\n\
                host @dbs all all trust\n\
                hostgssenc all all all trust\n\
                host all all 127.0.0.1/32 md5 clientcert=verify-full\n\
                host all all 127.0.0.1 trust\n\
                host all all 127.0.0.1 255.0.255.0 trust\n\
                bogus all all all trust\n\
                host all all\n\
                host \"unterminated all all trust\n\
                host all all all ldap\n\
                include other.conf\n\
                host samerole all all trust\n";
    let problems = Hba::parse(text).unwrap_err();
    assert_eq!(problems.len(), 15, "{problems:#?}");
    for (p, n) in problems.iter().zip(2..) {
        assert!(p.starts_with(&format!("line {n}:")), "{p}");
    }
    let all = problems.join("\n");
    for needle in [
        "group names (+admins) are not supported",
        "host names",
        "method password is not supported",
        "file inclusion (@dbs)",
        "options (clientcert=verify-full)",
        "method ldap is not supported",
    ] {
        assert!(all.contains(needle), "{needle}: {all}");
    }
}

#[test]
fn load_names_the_file() {
    let e = Hba::load("/nonexistent/pg_hba.conf").unwrap_err();
    assert!(e[0].contains("cannot read auth_hba_file /nonexistent/pg_hba.conf"), "{e:?}");
}
