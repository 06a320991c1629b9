// simple.thrift: a service that exercises every Thrift type callosum_like carries.
//
// Used by tests/upper and examples/thrift_*.py. Load it at run time, no code generation:
//     simple_thrift = thriftpy2.load("idl/simple.thrift", module_name="simple_thrift")

enum Color {
    RED = 1,
    GREEN = 2,
    BLUE = 3,
}

struct Point {
    1: required double x,
    2: required double y,
}

// One field of each kind, so one round trip checks them all.
struct Everything {
    1: bool flag,
    2: byte tiny,
    3: i16 small,
    4: i32 medium,
    5: i64 large,
    6: double real,
    7: string text,
    8: binary blob,
    9: list<i32> numbers,
    10: set<string> tags,
    11: map<string, Point> points,
    12: Color color,
    13: optional string note,
    14: list<list<binary>> nested,
    15: map<i64, bool> flags,
}

exception Oops {
    1: string message,
    2: i32 code,
}

exception Unlucky {
    1: i64 number,
}

service Simple {
    void ping(),
    string echo(1: string text),
    binary echo_binary(1: binary data),
    Everything mirror(1: Everything value),
    i64 add(1: i64 a, 2: i64 b),
    double divide(1: double a, 2: double b) throws (1: Oops oops),
    i32 fail(1: string kind) throws (1: Oops oops, 2: Unlucky unlucky),
    map<i32, list<string>> group_by_length(1: list<string> words),
    Color next_color(1: Color color),
    string greet(1: required string name, 2: string greeting = "hello", 3: optional string punctuation),
    oneway void notify(1: string event),
    list<string> events(),
}
